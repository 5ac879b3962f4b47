package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/beevik/etree"
)

// The SEPM-style paths and limits of docs/protocol.md.
const (
	pathAgent    = "/secars/secars.dll"
	pathRegister = "/secreg/secreg.dll"
	userAgent    = "Smc"

	maxIndexBytes   = 64 << 10
	maxProfileBytes = 16 << 20
	maxSerialLen    = 256
	maxRetryAfter   = time.Hour
)

// sepmProtocol is the SEPM-style heartbeat of docs/protocol.md.
type sepmProtocol struct{}

// beat runs one SEPM heartbeat: register if needed, GET the index from the
// first server in priority order that answers, then download what changed
// from that server.
func (sepmProtocol) beat(f *Fleet, c *client, idx int32) result {
	for _, b := range c.settings.Blocks {
		n := len(b.Servers)
		for k := range n {
			// Servers of one priority share the load: each client starts
			// at a different one.
			srv := b.Servers[(int(idx)+k)%n]
			if r, answered := f.beatServer(c, idx, srv); answered {
				return r
			}
		}
	}
	return result{outcome: outcomeUnusable, accelerate: true}
}

// beatServer runs the heartbeat against one server; answered is false when
// the client should try the next one.
func (f *Fleet) beatServer(c *client, idx int32, srv Server) (r result, answered bool) {
	if c.hostID == "" {
		if r, answered, ok := f.register(c, idx, srv); !ok {
			return r, answered
		}
	}
	resp := f.agent(c, srv, pathAgent, "index", nil, maxIndexBytes)
	f.count.indexLatency.observe(resp.took)
	if resp.err != nil {
		return result{}, false
	}
	f.noteIndex(c, resp.limited() || resp.status == http.StatusServiceUnavailable)
	if resp.limited() {
		return f.limitedResult(resp), true
	}
	if resp.status == http.StatusBadRequest && strings.HasPrefix(string(resp.body), "4 ") {
		// The server no longer knows this HostId: register again.
		f.count.fail(kindUnknownHost)
		c.hostID = ""
		f.count.registered.Add(-1)
		return result{}, false
	}
	if !f.statusOK(resp) {
		return result{}, false
	}
	ix, err := parseIndex(resp.body)
	if err != nil {
		f.count.fail(kindBadIndex)
		return result{}, false
	}
	r = result{outcome: outcomeOK}
	if ix.profile != c.profileSerial {
		r = worse(r, f.fetchProfile(c, srv, ix.profile))
	}
	if ix.sylink != "" && ix.sylink != c.sylinkSerial {
		r = worse(r, f.fetchSyLink(c, srv, ix.sylink))
	}
	if f.cfg.Wire == WireReal {
		r = worse(r, f.fetchContent(c, srv, resp.body))
	}
	if r.outcome == outcomeOK && f.cfg.LogBytes > 0 {
		f.uploadLog(c, srv)
	}
	return r, true
}

// register gets a HostId. ok is true when the client now has one.
func (f *Fleet) register(c *client, idx int32, srv Server) (r result, answered, ok bool) {
	form := url.Values{"hostname": {fmt.Sprintf("client-%06d", idx)}, "group": {f.cfg.Group}}
	resp := f.agent(c, srv, pathRegister, "register", []byte(form.Encode()), maxIndexBytes)
	if resp.err != nil {
		return result{}, false, false
	}
	if resp.limited() {
		return f.limitedResult(resp), true, false
	}
	if !f.statusOK(resp) {
		return result{}, false, false
	}
	id, err := parseRegistration(resp.body)
	if err != nil {
		f.count.fail(kindBadRegistration)
		return result{}, false, false
	}
	c.hostID = id
	f.count.registered.Add(1)
	return result{}, true, true
}

// fetchProfile downloads the policy and verifies it against the
// certificate the client trusts for srv.
func (f *Fleet) fetchProfile(c *client, srv Server, serial string) result {
	resp := f.agent(c, srv, pathAgent, "profile", nil, maxProfileBytes)
	if r, ok := f.download(resp); !ok {
		return r
	}
	if srv.VerifySignatures {
		if err := f.verdict.check(f.verify.get(srv.Cert), resp.body, "Profile"); err != nil {
			return f.refused()
		}
	}
	c.profileSerial = f.intern(serial)
	f.count.profileUpdates.Add(1)
	return result{outcome: outcomeOK}
}

// fetchSyLink downloads new communication settings, verifies them with the
// certificate trusted now, and adopts the server list and certificates of
// what was signed.
func (f *Fleet) fetchSyLink(c *client, srv Server, serial string) result {
	resp := f.agent(c, srv, pathAgent, "sylink", nil, maxSyLinkBytes)
	if r, ok := f.download(resp); !ok {
		return r
	}
	s, err := f.settingsFrom(resp.body, srv)
	if errors.Is(err, errSignature) {
		return f.refused()
	}
	if err != nil {
		f.count.fail(kindBadSyLink)
		return result{outcome: outcomeUnusable}
	}
	f.adopt(c, s)
	c.sylinkSerial = f.intern(serial)
	// A configuration change triggers an accelerated heartbeat.
	return result{outcome: outcomeOK, accelerate: true}
}

// settingsFrom verifies and parses a downloaded SyLink, sharing the result
// between clients that download the same bytes trusting the same
// certificate. Only verified documents are shared, so a document that fails
// is verified again by the next client: as rare as a bad settings document.
func (f *Fleet) settingsFrom(body []byte, srv Server) (*Settings, error) {
	key := sha256.Sum256(body)
	var trust certID
	if srv.Cert != nil {
		trust = idOf(srv.Cert)
	}
	cacheKey := string(key[:]) + string(trust[:]) + strconv.FormatBool(srv.VerifySignatures)
	if s, ok := f.adopted.get(cacheKey); ok {
		return s, nil
	}
	var root *etree.Element
	if srv.VerifySignatures {
		signed, err := f.verify.get(srv.Cert).verify(body, "ServerSettings")
		if err != nil {
			return nil, err
		}
		root = signed
	} else {
		doc := etree.NewDocument()
		if err := doc.ReadFromBytes(body); err != nil {
			return nil, fmt.Errorf("sylink: malformed XML: %w", err)
		}
		if root = doc.Root(); root == nil {
			return nil, errors.New("sylink: no root element")
		}
	}
	// Servers without their own <ServerCertificate> keep the certificate
	// that verified this document.
	s, err := parseSettings(root, srv.Cert)
	if err != nil {
		return nil, err
	}
	f.adopted.put(cacheKey, s)
	return s, nil
}

// refused counts a download the client's signature check rejected.
func (f *Fleet) refused() result {
	f.count.signatureFailures.Add(1)
	f.count.fail(kindSignature)
	return result{outcome: outcomeUnusable}
}

// download sorts a download response: ok means a 200 body to verify.
func (f *Fleet) download(resp response) (result, bool) {
	switch {
	case resp.err != nil:
		return result{outcome: outcomeDegraded}, false
	case resp.limited():
		return result{outcome: outcomeDegraded, retryAfter: resp.retryAfter}, false
	case !f.statusOK(resp):
		return result{outcome: outcomeDegraded}, false
	}
	return result{}, true
}

func (f *Fleet) uploadLog(c *client, srv Server) {
	f.agent(c, srv, pathAgent, "log", f.logBody, maxIndexBytes)
}

// statusOK counts a non-200 status by class.
func (f *Fleet) statusOK(resp response) bool {
	switch {
	case resp.status == http.StatusOK:
		return true
	case resp.status >= 500:
		f.count.fail(kindHTTP5xx)
	default:
		f.count.fail(kindHTTP4xx)
	}
	return false
}

// response is one HTTP exchange as the client saw it.
type response struct {
	status     int
	body       []byte
	size       int64 // bytes read when the body was discarded
	retryAfter time.Duration
	took       time.Duration
	err        error // transport failure, already counted
}

// limited is the server's "come back later": 429, or 503 with Retry-After.
func (r response) limited() bool {
	return r.err == nil && (r.status == http.StatusTooManyRequests ||
		(r.status == http.StatusServiceUnavailable && r.retryAfter > 0))
}

// do sends one request to srv and reads at most limit bytes of the answer.
func (f *Fleet) do(c *client, srv Server, method, path, query string, body []byte, limit int64) response {
	if f.cfg.Wire == WireReal {
		return f.doHTTP10(c, srv, method, path, query, body, limit, false)
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.Timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	began := time.Now()
	req, err := http.NewRequestWithContext(ctx, method, srv.BaseURL()+path+"?"+query, rd)
	if err != nil {
		f.count.fail(kindConnect)
		return response{err: fmt.Errorf("building request to %s: %w", srv.BaseURL(), err)}
	}
	req.Header.Set("User-Agent", userAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	f.count.requests.Add(1)
	hr, err := f.http.get(c.tls10, srv.VerifyCA).Do(req)
	if err != nil {
		f.count.fail(classify(err))
		return response{err: err, took: time.Since(began)}
	}
	defer hr.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hr.Body, limit+1))
	r := response{status: hr.StatusCode, body: data, retryAfter: parseRetryAfter(hr.Header.Get("Retry-After")), took: time.Since(began)}
	switch {
	case err != nil:
		f.count.fail(classify(err))
		r.err = err
	case int64(len(data)) > limit:
		f.count.fail(kindOversize)
		r.err = fmt.Errorf("%s%s answered more than %d bytes", srv.BaseURL(), path, limit)
	case r.limited():
		f.count.rateLimited.Add(1)
	}
	return r
}

// classify names a transport error.
func classify(err error) failKind {
	var netErr net.Error
	var recErr tls.RecordHeaderError
	var alert tls.AlertError
	var verr *tls.CertificateVerificationError
	var uaErr x509.UnknownAuthorityError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return kindTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return kindRefused
	case errors.As(err, &recErr), errors.As(err, &alert), errors.As(err, &verr), errors.As(err, &uaErr),
		strings.Contains(err.Error(), "tls: "):
		return kindTLS
	}
	return kindConnect
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent or bad.
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		if n <= 0 {
			return 0
		}
		return min(time.Duration(n)*time.Second, maxRetryAfter)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(t), 0), maxRetryAfter)
	}
	return 0
}

// index is what a client reads from index2.xml.
type index struct {
	profile string
	sylink  string
}

func parseIndex(body []byte) (index, error) {
	var doc struct {
		XMLName xml.Name `xml:"Index"`
		Profile *struct {
			SerialNumber string `xml:"SerialNumber,attr"`
		} `xml:"Profile"`
		SyLink *struct {
			Serial string `xml:"Serial,attr"`
		} `xml:"SyLink"`
	}
	if err := xml.Unmarshal(body, &doc); err != nil {
		return index{}, fmt.Errorf("index: %w", err)
	}
	if doc.Profile == nil || doc.Profile.SerialNumber == "" {
		return index{}, errors.New("index: no <Profile SerialNumber>")
	}
	out := index{profile: doc.Profile.SerialNumber}
	if doc.SyLink != nil {
		out.sylink = doc.SyLink.Serial
	}
	if len(out.profile) > maxSerialLen || len(out.sylink) > maxSerialLen {
		return index{}, fmt.Errorf("index: serial longer than %d characters", maxSerialLen)
	}
	return out, nil
}

func parseRegistration(body []byte) (string, error) {
	var doc struct {
		XMLName xml.Name `xml:"Registration"`
		HostID  string   `xml:"HostId,attr"`
	}
	if err := xml.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("registration: %w", err)
	}
	if doc.HostID == "" || len(doc.HostID) > maxSerialLen {
		return "", fmt.Errorf("registration: HostId %q is empty or too long", doc.HostID)
	}
	return doc.HostID, nil
}
