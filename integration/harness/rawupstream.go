package harness

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// maxRawHead bounds one request head the raw upstream reads; a longer one
// ends the connection (and is still recorded, truncated).
const maxRawHead = 1 << 20

// RawRequest is one request exactly as it reached a RawUpstream.
type RawRequest struct {
	// Head is the request line and header fields, byte for byte, including
	// the blank line that ends them.
	Head []byte
	// Body is the request body after framing is removed (Content-Length
	// bytes, or the concatenated chunks of a chunked body).
	Body []byte
}

// Line is the request line without its CRLF, e.g. "GET /secars/secars.dll?action=12 HTTP/1.1".
func (r RawRequest) Line() string {
	line, _, _ := bytes.Cut(r.Head, []byte("\n"))
	return strings.TrimSuffix(string(line), "\r")
}

// Target is the request target of the request line, e.g. "/secars/secars.dll?action=12".
func (r RawRequest) Target() string {
	fields := strings.Fields(r.Line())
	if len(fields) < 2 {
		return ""
	}
	return fields[1]
}

// Header returns every value of the header field name (ASCII
// case-insensitive), in the order received, untrimmed of inner spaces.
func (r RawRequest) Header(name string) []string {
	var values []string
	lines := strings.Split(string(r.Head), "\n")
	for _, line := range lines[1:] {
		line = strings.TrimSuffix(line, "\r")
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(k, name) {
			values = append(values, strings.TrimSpace(v))
		}
	}
	return values
}

// RawUpstream is a plain-TCP HTTP/1.1 server on 127.0.0.1 standing in for a
// manager: it records every request head it receives, byte for byte, before
// any HTTP library could normalise it, and answers with bytes the test
// chooses, so a test can send a manager answer no well-behaved server would
// (repeated singleton headers, banners, stack traces).
type RawUpstream struct {
	// Addr is "127.0.0.1:PORT", for a reverse_proxy upstream.
	Addr string

	ln     net.Listener
	answer func(reqHead []byte) []byte

	mu       sync.Mutex
	requests []RawRequest
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// StartRawUpstream listens on 127.0.0.1:0 and serves until the test ends.
// For every request it reads the head and the body (Content-Length or
// chunked), records them, and writes answer(head) to the connection as is.
// After the answer the connection stays open for the next request unless
// the answer contains a "Connection: close" field, in which case it is
// closed; an answer should therefore carry Content-Length (or
// Connection: close and no length).
func StartRawUpstream(t testing.TB, answer func(reqHead []byte) []byte) *RawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("raw upstream: listening on 127.0.0.1: %v", err)
	}
	u := &RawUpstream{Addr: ln.Addr().String(), ln: ln, answer: answer, conns: map[net.Conn]struct{}{}}
	u.wg.Add(1)
	go u.serve()
	t.Cleanup(u.close)
	return u
}

// Requests returns a copy of every request received so far, in arrival order.
func (u *RawUpstream) Requests() []RawRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]RawRequest(nil), u.requests...)
}

// Heads returns the head of every request received so far, in arrival order.
func (u *RawUpstream) Heads() [][]byte {
	reqs := u.Requests()
	heads := make([][]byte, len(reqs))
	for i, r := range reqs {
		heads[i] = r.Head
	}
	return heads
}

// Reset forgets the requests recorded so far, so a table-driven test can
// check what each case alone sent up.
func (u *RawUpstream) Reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.requests = nil
}

// RawAnswer builds an HTTP/1.1 answer: statusLine (e.g. "200 OK"), the
// header lines as given (e.g. "Server: Microsoft-IIS/10.0"; repeats are
// kept), and body. Content-Length is added unless a header line sets
// Content-Length or Transfer-Encoding.
func RawAnswer(statusLine string, headerLines []string, body string) []byte {
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 " + statusLine + "\r\n")
	framed := false
	for _, h := range headerLines {
		name, _, _ := strings.Cut(h, ":")
		if strings.EqualFold(name, "Content-Length") || strings.EqualFold(name, "Transfer-Encoding") {
			framed = true
		}
		b.WriteString(h + "\r\n")
	}
	if !framed {
		b.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n")
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	return b.Bytes()
}

func (u *RawUpstream) serve() {
	defer u.wg.Done()
	for {
		conn, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.mu.Lock()
		u.conns[conn] = struct{}{}
		u.mu.Unlock()
		u.wg.Add(1)
		go u.handle(conn)
	}
}

func (u *RawUpstream) handle(conn net.Conn) {
	defer u.wg.Done()
	defer func() {
		conn.Close()
		u.mu.Lock()
		delete(u.conns, conn)
		u.mu.Unlock()
	}()
	br := bufio.NewReader(conn)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
		head, err := readRawHead(br)
		if len(head) > 0 {
			var body []byte
			if err == nil {
				body, err = readRawBody(br, head)
			}
			u.mu.Lock()
			u.requests = append(u.requests, RawRequest{Head: head, Body: body})
			u.mu.Unlock()
		}
		if err != nil {
			return
		}
		out := u.answer(head)
		if _, err := conn.Write(out); err != nil {
			return
		}
		if answerCloses(out) {
			return
		}
	}
}

// readRawHead reads up to and including the blank line ending a head.
func readRawHead(br *bufio.Reader) ([]byte, error) {
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return head, err
		}
		if len(head) > maxRawHead {
			return head, errors.New("request head too long")
		}
		if err == nil && (bytes.Equal(line, []byte("\r\n")) || bytes.Equal(line, []byte("\n"))) {
			if len(head) == len(line) {
				head = head[:0] // a stray CRLF between requests
				continue
			}
			return head, nil
		}
	}
}

func readRawBody(br *bufio.Reader, head []byte) ([]byte, error) {
	req := RawRequest{Head: head}
	if te := req.Header("Transfer-Encoding"); len(te) > 0 && strings.EqualFold(te[len(te)-1], "chunked") {
		body, err := io.ReadAll(io.LimitReader(httputil.NewChunkedReader(br), maxRawHead))
		if err != nil {
			return body, err
		}
		// The chunked reader stops at the last chunk; the trailer section
		// (possibly empty) ends with a blank line.
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return body, err
			}
			if bytes.Equal(line, []byte("\r\n")) || bytes.Equal(line, []byte("\n")) {
				return body, nil
			}
		}
	}
	cl := req.Header("Content-Length")
	if len(cl) == 0 {
		return nil, nil
	}
	n, err := strconv.ParseInt(cl[0], 10, 64)
	if err != nil || n < 0 || n > maxRawHead {
		return nil, errors.New("unusable Content-Length")
	}
	body := make([]byte, n)
	_, err = io.ReadFull(br, body)
	return body, err
}

// answerCloses reports whether the answer's head has "Connection: close".
func answerCloses(answer []byte) bool {
	head, _, _ := bytes.Cut(answer, []byte("\r\n\r\n"))
	for _, line := range strings.Split(string(head), "\r\n")[1:] {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), "Connection") && strings.EqualFold(strings.TrimSpace(v), "close") {
			return true
		}
	}
	return false
}

func (u *RawUpstream) close() {
	u.ln.Close()
	u.mu.Lock()
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}
