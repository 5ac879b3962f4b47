package fleet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/legacygate/legacygate/internal/secars"
)

// Wire formats of the SEPM-style clients' queries.
const (
	// WireReadable is the emulator's readable ?action=…&hostid=… over
	// HTTP/1.1 keep-alive (default).
	WireReadable = "readable"
	// WireReal is what real SEP clients send: every agent request a POST
	// of ?h=<about 1,000 hex> obfuscated with the SyLink's KCS (package
	// secars), User-Agent Smc, HTTP/1.0 with Content-Length, one
	// connection per request; definitions downloaded from
	// /content/{GUID}/{rev}/full.zip; and after any error, the next
	// heartbeat after a uniform 0–60 s (scaled with the interval), whatever
	// Retry-After said (Broadcom KB 177654).
	WireReal = "real"
)

const maxContentBytes = 1 << 30

// realAction maps the readable action names to the real wire's codes.
var realAction = map[string]int{
	"register": secars.ActionRegister,
	"index":    secars.ActionIndex,
	"profile":  secars.ActionProfile,
	"sylink":   secars.ActionSyLink,
	"log":      secars.ActionLog,
}

// agent sends one agent request for action in the fleet's wire format:
// GET (POST for log) ?action=…&hostid=… readable, POST ?h=… real.
func (f *Fleet) agent(c *client, srv Server, path, action string, body []byte, limit int64) response {
	if f.cfg.Wire != WireReal {
		method, q := http.MethodGet, "action="+action
		if action == "log" || action == "register" {
			method = http.MethodPost
		}
		if action != "register" {
			q += "&hostid=" + url.QueryEscape(c.hostID)
		}
		return f.do(c, srv, method, path, q, body, limit)
	}
	key, err := secars.NewKey(c.settings.KCS)
	if err != nil {
		f.count.fail(kindConnect)
		return response{err: fmt.Errorf("client %d: SyLink Kcs: %w", c.idx, err)}
	}
	c.seq++
	var nonce [4]byte
	binary.BigEndian.PutUint32(nonce[:], uint32(c.seq)*2654435761^uint32(c.idx))
	q := secars.Query{Action: realAction[action], HostID: c.hostID, Seq: c.seq}
	if action == "register" {
		q.Hostname = fmt.Sprintf("client-%06d", c.idx)
	}
	if body == nil {
		body = []byte{}
	}
	return f.do(c, srv, http.MethodPost, path, "h="+key.Encode(q, nonce), body, limit)
}

// limitedResult is what a "come back later" means to the client: the
// readable wire honours Retry-After; a real client treats it as any error
// fetching the index, an accelerated heartbeat.
func (f *Fleet) limitedResult(resp response) result {
	if f.cfg.Wire == WireReal {
		return result{outcome: outcomeLimited, accelerate: true}
	}
	return result{outcome: outcomeLimited, retryAfter: resp.retryAfter}
}

// sourceAddr is the local address client c's connections leave from:
// with NAT n, clients 0..n-1 share 127.0.0.2, the next n 127.0.0.3, and
// so on (all of 127/8 is loopback on Linux). nil without NAT.
func (f *Fleet) sourceAddr(c *client) *net.TCPAddr {
	if f.cfg.NAT <= 0 {
		return nil
	}
	site := uint32(c.idx)/uint32(f.cfg.NAT) + 2
	return &net.TCPAddr{IP: net.IPv4(127, byte(site>>16), byte(site>>8), byte(site))}
}

// doHTTP10 sends one request the way a SEP agent does: a new connection
// (TLS for an https server, with the client's ceiling), HTTP/1.0, a
// Content-Length on every POST, the connection closed after the answer.
// With discard, the body is counted, not kept.
func (f *Fleet) doHTTP10(c *client, srv Server, method, path, query string, body []byte, limit int64, discard bool) response {
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.Timeout)
	defer cancel()
	f.count.requests.Add(1)
	fail := func(err error) response {
		f.count.fail(classify(err))
		return response{err: err, took: time.Since(began)}
	}
	base, err := url.Parse(srv.BaseURL())
	if err != nil {
		return fail(fmt.Errorf("server %q: %w", srv.BaseURL(), err))
	}
	d := net.Dialer{Timeout: f.cfg.Timeout}
	if a := f.sourceAddr(c); a != nil {
		d.LocalAddr = a
	}
	conn, err := d.DialContext(ctx, "tcp", base.Host)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if base.Scheme == "https" {
		cfg := clientTLS(transportKey{tls10: c.tls10, verifyCA: srv.VerifyCA}, f.cfg.RootCAs)
		cfg.ServerName = base.Hostname()
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(err)
		}
		conn = tc
	}
	var head bytes.Buffer
	target := path
	if query != "" {
		target += "?" + query
	}
	fmt.Fprintf(&head, "%s %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: %s\r\n", method, target, base.Host, userAgent)
	if method == http.MethodPost {
		if len(body) > 0 {
			head.WriteString("Content-Type: application/x-www-form-urlencoded\r\n")
		}
		fmt.Fprintf(&head, "Content-Length: %d\r\n", len(body))
	}
	head.WriteString("\r\n")
	head.Write(body)
	if _, err := conn.Write(head.Bytes()); err != nil {
		return fail(err)
	}
	hr, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		return fail(err)
	}
	defer hr.Body.Close()
	r := response{status: hr.StatusCode, retryAfter: parseRetryAfter(hr.Header.Get("Retry-After"))}
	var n int64
	if discard {
		n, err = io.Copy(io.Discard, io.LimitReader(hr.Body, limit+1))
		r.size = n
	} else {
		r.body, err = io.ReadAll(io.LimitReader(hr.Body, limit+1))
		n = int64(len(r.body))
	}
	r.took = time.Since(began)
	switch {
	case err != nil:
		f.count.fail(classify(err))
		r.err = err
	case n > limit:
		f.count.fail(kindOversize)
		r.err = fmt.Errorf("%s%s answered more than %d bytes", srv.BaseURL(), path, limit)
	case hr.ContentLength >= 0 && n != hr.ContentLength:
		f.count.fail(kindConnect)
		r.err = fmt.Errorf("%s%s: %d of %d bytes", srv.BaseURL(), path, n, hr.ContentLength)
	case r.limited():
		f.count.rateLimited.Add(1)
	}
	return r
}

// contentRef is the definitions revision an index names.
type contentRef struct {
	guid, revision string
}

// parseContent reads <Content Guid Revision> from an index; ok is false
// when the index names none (or names one with unsafe path characters).
func parseContent(body []byte) (contentRef, bool) {
	var doc struct {
		Content *struct {
			Guid     string `xml:"Guid,attr"`
			Revision string `xml:"Revision,attr"`
		} `xml:"Content"`
	}
	if xml.Unmarshal(body, &doc) != nil || doc.Content == nil {
		return contentRef{}, false
	}
	ref := contentRef{guid: doc.Content.Guid, revision: doc.Content.Revision}
	for _, s := range []string{ref.guid, ref.revision} {
		if s == "" || len(s) > 64 || strings.ContainsAny(s, "/\\?#%.") {
			return contentRef{}, false
		}
	}
	return ref, true
}

// fetchContent downloads the definitions revision the index names when
// the client does not have it yet, as SEP clients do with plain GETs.
func (f *Fleet) fetchContent(c *client, srv Server, index []byte) result {
	ref, ok := parseContent(index)
	if !ok || ref.revision == c.contentRev {
		return result{outcome: outcomeOK}
	}
	resp := f.doHTTP10(c, srv, http.MethodGet, "/content/"+ref.guid+"/"+ref.revision+"/full.zip", "", nil, maxContentBytes, true)
	if r, ok := f.download(resp); !ok {
		return r
	}
	c.contentRev = f.intern(ref.revision)
	f.count.contentDownloads.Add(1)
	f.count.contentBytes.Add(resp.size)
	return result{outcome: outcomeOK}
}

// noteIndex keeps the count of starved clients: those whose latest
// OrphanAfter index requests in a row were all refused (429, 503).
func (f *Fleet) noteIndex(c *client, refused bool) {
	k := uint16(min(f.cfg.OrphanAfter, 1<<15))
	if !refused {
		if c.refusedStreak >= k {
			f.count.starved.Add(-1)
		}
		c.refusedStreak = 0
		return
	}
	if c.refusedStreak < ^uint16(0) {
		c.refusedStreak++
	}
	if c.refusedStreak == k {
		f.count.starved.Add(1)
		if !c.everStarved {
			c.everStarved = true
			f.count.everStarved.Add(1)
		}
	}
}

// sourceAddrString is for logs and tests.
func (f *Fleet) sourceAddrString(idx int) string {
	if idx < 0 || idx >= len(f.clients) {
		return ""
	}
	if a := f.sourceAddr(&f.clients[idx]); a != nil {
		return a.IP.String()
	}
	return ""
}
