package legacytls

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/legacygate/legacygate/integration/certs"
)

const testPin = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="

func provisionLegacyTLS(t *testing.T, l *LegacyTLS) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(func() { cancel(); _ = l.Cleanup() })
	return l.Provision(ctx)
}

func TestLegacyTLSProvisionErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name string
		l    LegacyTLS
		want string
	}{
		{"pin without sha256 prefix", LegacyTLS{Pins: []string{"md5/abc"}}, "pins[0]"},
		{"pin with bad base64", LegacyTLS{Pins: []string{testPin, "sha256/!!!"}}, "pins[1]"},
		{"pin of wrong length", LegacyTLS{Pins: []string{"sha256/AAAA"}}, "pins[0]"},
		{"malformed pin says how to get one", LegacyTLS{Pins: []string{"sha256/AAAA"}}, "legacygate pin HOST:PORT"},
		{"placeholder pin of zeros", LegacyTLS{Pins: []string{testPin, "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}, "pins[1]: pin \"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\" is a placeholder"},
		{"placeholder pin of 0xff", LegacyTLS{Pins: []string{"sha256///////////////////////////////////////////8="}}, "placeholder (all 32 bytes are 0xff)"},
		{"placeholder pin says how to get one", LegacyTLS{Pins: []string{"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}, "`legacygate pin HOST:PORT`"},
		{"unknown min_version", LegacyTLS{Pins: []string{testPin}, MinVersion: "ssl3"}, "min_version"},
		{"unknown max_version", LegacyTLS{Pins: []string{testPin}, MaxVersion: "tls1.4"}, "max_version"},
		{"min above max", LegacyTLS{Pins: []string{testPin}, MinVersion: "tls1.2", MaxVersion: "tls1.0"}, "min_version TLS 1.2 is above max_version TLS 1.0"},
		{"max below the default min", LegacyTLS{Pins: []string{testPin}, MaxVersion: "tls1.1"}, "min_version TLS 1.2 is above max_version TLS 1.1"},
		{"no pin and no trust pool", LegacyTLS{}, "no pin and no trust pool"},
		{"insecure skip verify", LegacyTLS{Pins: []string{testPin}, HTTPTransport: reverseproxy.HTTPTransport{TLS: &reverseproxy.TLSConfig{InsecureSkipVerify: true}}}, "tls_insecure_skip_verify"},
		{"except ports", LegacyTLS{Pins: []string{testPin}, HTTPTransport: reverseproxy.HTTPTransport{TLS: &reverseproxy.TLSConfig{ExceptPorts: []string{"8014"}}}}, "tls_except_ports"},
		{"unknown cipher suite", LegacyTLS{Pins: []string{testPin}, CipherSuites: []string{"TLS_RSA_WITH_IDEA_CBC_SHA"}}, "cipher_suites"},
		{"TLS 1.3 cipher suite", LegacyTLS{Pins: []string{testPin}, CipherSuites: []string{"TLS_AES_128_GCM_SHA256"}}, "cipher_suites"},
		{"negative max_conns", LegacyTLS{Pins: []string{testPin}, MaxConns: -1}, "legacy_tls: max_conns"},
		{"negative max_conn_wait", LegacyTLS{Pins: []string{testPin}, MaxConnWait: -1}, "legacy_tls: max_conn_wait"},
		{"max_conns_per_host beside max_conns", LegacyTLS{Pins: []string{testPin}, MaxConns: 8, HTTPTransport: reverseproxy.HTTPTransport{MaxConnsPerHost: 16}}, "legacy_tls: max_conns_per_host"},
		{"HTTP/3", LegacyTLS{Pins: []string{testPin}, HTTPTransport: reverseproxy.HTTPTransport{Versions: []string{"3"}}}, "versions"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := provisionLegacyTLS(t, &tc.l)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Provision error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestLegacyTLSProvisionAcceptsPinOrTrustPool(t *testing.T) {
	tests := []struct {
		name string
		l    LegacyTLS
	}{
		{"pin", LegacyTLS{Pins: []string{testPin}}},
		{"pin with TLS 1.0 and RSA key exchange", LegacyTLS{Pins: []string{testPin}, MinVersion: "tls1.0", MaxVersion: "tls1.2", CipherSuites: []string{"TLS_RSA_WITH_AES_128_CBC_SHA", "TLS_RSA_WITH_3DES_EDE_CBC_SHA"}}},
		{"trust pool", LegacyTLS{HTTPTransport: reverseproxy.HTTPTransport{TLS: &reverseproxy.TLSConfig{RootCAPEMFiles: []string{writeTestCAFile(t)}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := provisionLegacyTLS(t, &tc.l); err != nil {
				t.Fatalf("Provision: %v", err)
			}
			if tc.l.Transport == nil || tc.l.Transport.TLSClientConfig == nil {
				t.Fatal("no TLS client config after Provision")
			}
		})
	}
}

func writeTestCAFile(t *testing.T) string {
	t.Helper()
	pair, err := certs.New(certs.Modern, "manager.test", 1024)
	if err != nil {
		t.Fatal(err)
	}
	file, _, err := pair.WriteFiles(t.TempDir(), "ca")
	if err != nil {
		t.Fatal(err)
	}
	return file
}

// legacyTLSTestServer is a TLS 1.0-only server with a SHA-1-signed certificate.
func legacyTLSTestServer(t *testing.T) (addr string, pair *certs.Pair) {
	t.Helper()
	pair, err := certs.New(certs.SHA1, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pair.TLS()},
		MinVersion:   tls.VersionTLS10,
		MaxVersion:   tls.VersionTLS10,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, tls.VersionName(r.TLS.Version))
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), pair
}

func TestLegacyTLSRoundTripChecksPin(t *testing.T) {
	addr, pair := legacyTLSTestServer(t)
	tests := []struct {
		name    string
		pins    []string
		wantErr string
	}{
		{"matching pin among several", []string{testPin, pair.Pin()}, ""},
		{"wrong pin", []string{testPin}, "(CN=manager.test,O=legacygate emulated manager) matches none of the pins " + testPin},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := &LegacyTLS{Pins: tc.pins, MinVersion: "tls1.0"}
			if err := provisionLegacyTLS(t, l); err != nil {
				t.Fatal(err)
			}
			// No scheme, as reverse_proxy hands it over: the transport must pick TLS.
			req := (&http.Request{Method: http.MethodGet, URL: &url.URL{Host: addr, Path: "/"}, Header: http.Header{}}).WithContext(context.Background())
			req.Host = addr
			resp, err := l.RoundTrip(req)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("RoundTrip error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("RoundTrip: %v", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if string(body) != "TLS 1.0" {
				t.Fatalf("manager saw %q, want TLS 1.0", body)
			}
		})
	}
}

func TestLegacyTLSVerifyPinNeedsACertificate(t *testing.T) {
	l := &LegacyTLS{Pins: []string{testPin}}
	if err := provisionLegacyTLS(t, l); err != nil {
		t.Fatal(err)
	}
	if err := l.verifyPin(tls.ConnectionState{}); err == nil {
		t.Fatal("verifyPin accepted a handshake without certificates")
	}
}

// recordManager is a TLS 1.2 upstream that counts the application-data
// records clients send and the requests that reach its handler. Each
// handler call first announces itself on started, then reads the whole body.
type recordManager struct {
	addr     string
	pin      string
	records  atomic.Int64
	requests atomic.Int64
	started  chan struct{}
	bodies   chan []byte
}

func newRecordManager(t *testing.T) *recordManager {
	t.Helper()
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	m := &recordManager{pin: pair.Pin(), started: make(chan struct{}, 16), bodies: make(chan []byte, 16)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn := tls.NewListener(recordCountingListener{ln, &m.records}, &tls.Config{
		Certificates: []tls.Certificate{pair.TLS()}, MaxVersion: tls.VersionTLS12,
	})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.requests.Add(1)
		m.started <- struct{}{}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		m.bodies <- body
		io.WriteString(w, "ok")
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(tlsLn)
	t.Cleanup(func() { srv.Close() })
	m.addr = ln.Addr().String()
	return m
}

// recordCountingListener's connections count the TLS application-data
// records their peer sends.
type recordCountingListener struct {
	net.Listener
	records *atomic.Int64
}

func (l recordCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordCountingConn{Conn: c, records: l.records}, nil
}

type recordCountingConn struct {
	net.Conn
	records *atomic.Int64
	header  []byte // the current record header, up to 5 bytes
	skip    int    // bytes of the current record's payload still to come
}

func (c *recordCountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	for b := p[:n]; len(b) > 0; {
		if c.skip > 0 {
			k := min(c.skip, len(b))
			c.skip -= k
			b = b[k:]
			continue
		}
		k := min(5-len(c.header), len(b))
		c.header = append(c.header, b[:k]...)
		b = b[k:]
		if len(c.header) == 5 {
			if c.header[0] == 23 { // application data
				c.records.Add(1)
			}
			c.skip = int(binary.BigEndian.Uint16(c.header[3:5]))
			c.header = c.header[:0]
		}
	}
	return n, err
}

// provisionRecordTransport is legacy_tls pinned to m, with opts applied.
func provisionRecordTransport(t *testing.T, m *recordManager, opts func(*LegacyTLS)) *LegacyTLS {
	t.Helper()
	return pinnedTransport(t, m.pin, opts)
}

// pinnedTransport is legacy_tls pinned to pin, with opts applied.
func pinnedTransport(t *testing.T, pin string, opts func(*LegacyTLS)) *LegacyTLS {
	t.Helper()
	l := &LegacyTLS{Pins: []string{pin}}
	if opts != nil {
		opts(l)
	}
	if err := provisionLegacyTLS(t, l); err != nil {
		t.Fatal(err)
	}
	return l
}

func postRequest(addr string, body io.ReadCloser, length int64, header http.Header) *http.Request {
	if header == nil {
		header = http.Header{}
	}
	req := &http.Request{Method: http.MethodPost, URL: &url.URL{Host: addr, Path: "/heartbeat"},
		Header: header, Host: addr, Body: body, ContentLength: length}
	return req.WithContext(context.Background())
}

// opaqueBody hides its reader's type from the transport, as a server
// request body does, and records reads and closes.
type opaqueBody struct {
	r      io.Reader
	reads  atomic.Int64
	closed atomic.Bool
}

func (b *opaqueBody) Read(p []byte) (int, error) {
	b.reads.Add(1)
	return b.r.Read(p)
}

func (b *opaqueBody) Close() error { b.closed.Store(true); return nil }

func roundTripOK(t *testing.T, l *LegacyTLS, req *http.Request) {
	t.Helper()
	resp, err := l.RoundTrip(req)
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	defer resp.Body.Close()
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || string(got) != "ok" {
		t.Fatalf("answer %d %q, want 200 ok", resp.StatusCode, got)
	}
}

func TestLegacyTLSSendsASmallBodyWithItsHeadersInOneRecord(t *testing.T) {
	tests := []struct {
		name        string
		size        int
		wantRecords int64 // 0: at least 2, the body streamed after the headers
	}{
		{"heartbeat-sized body", 200, 1},
		{"body that nearly fills the default write buffer", 3 << 10, 1},
		{"body over the default write buffer is streamed", 64 << 10, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newRecordManager(t)
			l := provisionRecordTransport(t, m, nil)
			want := bytes.Repeat([]byte("h"), tc.size)
			// A first request opens the connection, so that the second
			// counts only the records of one request.
			for i := range 2 {
				before := m.records.Load()
				body := &opaqueBody{r: bytes.NewReader(want)}
				roundTripOK(t, l, postRequest(m.addr, body, int64(len(want)), nil))
				if got := <-m.bodies; !bytes.Equal(got, want) {
					t.Fatalf("manager received %d bytes, want the %d sent", len(got), len(want))
				}
				<-m.started
				if !body.closed.Load() {
					t.Fatal("the request body was not closed")
				}
				sent := m.records.Load() - before
				if i == 1 && tc.wantRecords > 0 && sent != tc.wantRecords {
					t.Fatalf("the request took %d TLS records, want %d", sent, tc.wantRecords)
				}
				if i == 1 && tc.wantRecords == 0 && sent < 2 {
					t.Fatalf("a %d-byte body took %d TLS record(s): it was buffered whole", tc.size, sent)
				}
			}
		})
	}
}

func TestLegacyTLSCoalescesOnlySmallBodiesOfKnownLength(t *testing.T) {
	tests := []struct {
		name        string
		length      int64
		header      http.Header
		writeBuffer int
		getBody     bool
		want        bool
	}{
		{"small body of known length", 200, nil, 0, false, true},
		{"body of the write buffer's size", 4096, nil, 0, false, true},
		{"body over the default write buffer", 4097, nil, 0, false, false},
		{"body within a larger write_buffer", 12 << 10, nil, 16 << 10, false, true},
		{"body over a smaller write_buffer", 2048, nil, 1024, false, false},
		{"unknown length", -1, nil, 0, false, false},
		{"no body", 0, nil, 0, false, false},
		{"Expect: 100-continue", 200, http.Header{"Expect": {"100-continue"}}, 0, false, false},
		{"incremental forwarding", 200, http.Header{"Incremental": {"?1"}}, 0, false, false},
		{"a GetBody of its own", 200, nil, 0, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := &LegacyTLS{}
			l.WriteBufferSize = tc.writeBuffer
			req := postRequest("manager.test:443", io.NopCloser(strings.NewReader("x")), tc.length, tc.header)
			if tc.getBody {
				req.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
			}
			out, body := l.coalesceBody(req)
			if got := body != nil; got != tc.want {
				t.Fatalf("coalesced = %v, want %v", got, tc.want)
			}
			if !tc.want && out != req {
				t.Fatal("a request passed as it is was copied")
			}
		})
	}
}

// gatedBody gives its first byte at once and the rest only once the
// manager's handler has started, that is once the headers have arrived. A
// transport that read it whole before sending the headers would wait for
// the gate forever.
type gatedBody struct {
	first, open bool
	rest        io.Reader
	gate        <-chan struct{}
}

func (b *gatedBody) Read(p []byte) (int, error) {
	if !b.first {
		b.first = true
		p[0] = 'g'
		return 1, nil
	}
	if !b.open {
		select {
		case <-b.gate:
			b.open = true
		case <-time.After(10 * time.Second):
			return 0, errors.New("the manager never received the headers")
		}
	}
	return b.rest.Read(p)
}

func (b *gatedBody) Close() error { return nil }

func TestLegacyTLSStreamsBodiesItMustNotHold(t *testing.T) {
	const size = 1000
	tests := []struct {
		name   string
		length int64 // the request's ContentLength
		header http.Header
		opts   func(*LegacyTLS)
	}{
		{"unknown length (chunked)", -1, nil, nil},
		{"length over the write buffer", size, nil, func(l *LegacyTLS) { l.WriteBufferSize = 512 }},
		{"Expect: 100-continue", size, http.Header{"Expect": {"100-continue"}}, func(l *LegacyTLS) {
			l.ExpectContinueTimeout = caddy.Duration(5 * time.Second)
		}},
		{"incremental forwarding", size, http.Header{"Incremental": {"?1"}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newRecordManager(t)
			l := provisionRecordTransport(t, m, tc.opts)
			body := &gatedBody{rest: bytes.NewReader(bytes.Repeat([]byte("g"), size-1)), gate: m.started}
			roundTripOK(t, l, postRequest(m.addr, body, tc.length, tc.header))
			if got := <-m.bodies; len(got) != size {
				t.Fatalf("manager received %d bytes, want %d", len(got), size)
			}
		})
	}
}

var errClientGone = errors.New("client went away mid-body")

func TestLegacyTLSSendsNothingWhenTheSmallBodyCannotBeRead(t *testing.T) {
	m := newRecordManager(t)
	l := provisionRecordTransport(t, m, nil)
	roundTripOK(t, l, postRequest(m.addr, &opaqueBody{r: strings.NewReader("x")}, 1, nil))
	<-m.started
	<-m.bodies
	records, requests := m.records.Load(), m.requests.Load()

	partial := io.MultiReader(strings.NewReader("half a heartbeat"), iotest.ErrReader(errClientGone))
	_, err := l.RoundTrip(postRequest(m.addr, &opaqueBody{r: partial}, 200, nil))
	if !errors.Is(err, errClientGone) || !strings.Contains(err.Error(), "reading the request body") {
		t.Fatalf("RoundTrip error = %v, want the body's read error", err)
	}
	time.Sleep(100 * time.Millisecond) // anything sent would have been handled by now
	if got := m.records.Load() - records; got != 0 {
		t.Fatalf("%d TLS records reached the manager for a request whose body failed", got)
	}
	if got := m.requests.Load() - requests; got != 0 {
		t.Fatalf("the manager handled %d requests whose body failed", got)
	}
}

func TestLegacyTLSLeavesTheBodyUnreadWhenTheDialFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there any more
	l := &LegacyTLS{Pins: []string{testPin}}
	if err := provisionLegacyTLS(t, l); err != nil {
		t.Fatal(err)
	}
	body := &opaqueBody{r: strings.NewReader("heartbeat")}
	if _, err := l.RoundTrip(postRequest(addr, body, int64(len("heartbeat")), nil)); err == nil {
		t.Fatal("RoundTrip to a closed port succeeded")
	}
	if n := body.reads.Load(); n != 0 {
		t.Fatalf("the body was read %d times although no connection was made; reverse_proxy could not retry it", n)
	}
	if !body.closed.Load() {
		t.Fatal("the body was not closed, as a RoundTripper must")
	}
}

// BenchmarkLegacyTLSVsStockHTTPTransport compares legacy_tls (pin check)
// with Caddy's http transport (chain verification against the same
// certificate as a trusted root) on one TLS 1.2 upstream: GETs over
// kept-alive connections and with a new handshake per request, and POSTs of
// a heartbeat-sized body whose type the transport cannot see, as a proxied
// client's body (legacy_tls sends it with the headers in one record).
func BenchmarkLegacyTLSVsStockHTTPTransport(b *testing.B) {
	pair, err := certs.New(certs.Modern, "manager.test", 2048)
	if err != nil {
		b.Fatal(err)
	}
	certFile, _, err := pair.WriteFiles(b.TempDir(), "manager")
	if err != nil {
		b.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pair.TLS()}, MaxVersion: tls.VersionTLS12,
	})
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()
	heartbeat := bytes.Repeat([]byte("h"), 200)

	for _, c := range []struct {
		name      string
		keepAlive bool
		body      []byte
	}{
		{"keepalive=true", true, nil},
		{"keepalive=false", false, nil},
		{"keepalive=true,post=200B", true, heartbeat},
	} {
		transports := map[string]http.RoundTripper{
			"stock_http": benchTransport(b, &reverseproxy.HTTPTransport{
				TLS: &reverseproxy.TLSConfig{
					CARaw:      json.RawMessage(fmt.Sprintf(`{"provider":"file","pem_files":[%q]}`, certFile)),
					ServerName: "localhost",
				},
				KeepAlive: &reverseproxy.KeepAlive{Enabled: &c.keepAlive},
			}),
			"legacy_tls": benchTransport(b, &LegacyTLS{
				Pins:          []string{pair.Pin()},
				HTTPTransport: reverseproxy.HTTPTransport{KeepAlive: &reverseproxy.KeepAlive{Enabled: &c.keepAlive}},
			}),
		}
		for _, name := range []string{"stock_http", "legacy_tls"} {
			b.Run(c.name+"/"+name, func(b *testing.B) {
				rt := transports[name]
				b.ReportAllocs()
				for b.Loop() {
					req := &http.Request{Method: http.MethodGet, URL: &url.URL{Host: addr, Path: "/"}, Header: http.Header{}, Host: addr}
					if c.body != nil {
						req.Method, req.ContentLength = http.MethodPost, int64(len(c.body))
						req.Body = &opaqueBody{r: bytes.NewReader(c.body)}
					}
					resp, err := rt.RoundTrip(req.WithContext(context.Background()))
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
	}
}

func benchTransport(b *testing.B, rt interface {
	http.RoundTripper
	caddy.Provisioner
	caddy.CleanerUpper
}) http.RoundTripper {
	b.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(func() { cancel(); _ = rt.Cleanup() })
	if err := rt.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	return rt
}

// TestLegacyTLSSendsNothingOverHTTP2WhenTheSmallBodyCannotBeRead: over
// HTTP/2 the transport would end the stream after the empty body it was
// handed, and the manager would handle a finished request with no body.
func TestLegacyTLSSendsNothingOverHTTP2WhenTheSmallBodyCannotBeRead(t *testing.T) {
	var handled atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handled.Add(1)
		io.Copy(io.Discard, r.Body)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	l := &LegacyTLS{Pins: []string{PinOf(srv.Certificate())}}
	if err := provisionLegacyTLS(t, l); err != nil {
		t.Fatal(err)
	}
	addr := srv.Listener.Addr().String()
	ok := postRequest(addr, &opaqueBody{r: strings.NewReader("x")}, 1, nil)
	resp, err := l.RoundTrip(ok)
	if err != nil {
		t.Fatalf("a whole body: %v", err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("the manager was reached over %s, want HTTP/2", resp.Proto)
	}
	before := handled.Load()

	partial := io.MultiReader(strings.NewReader("half"), iotest.ErrReader(errClientGone))
	resp, err = l.RoundTrip(postRequest(addr, &opaqueBody{r: partial}, 10, nil))
	if err == nil {
		resp.Body.Close()
	}
	if !errors.Is(err, errClientGone) {
		t.Fatalf("RoundTrip error = %v, want the body's read error", err)
	}
	time.Sleep(100 * time.Millisecond) // anything sent would have been handled by now
	if got := handled.Load() - before; got != 0 {
		t.Fatalf("the manager handled %d requests whose body failed", got)
	}
}
