package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
)

const xmlGuardEnvelopeNS = "http://schemas.xmlsoap.org/soap/envelope/"

// xmlGuardSOAPRequest is a PolicyServer-style SOAP 1.1 request: the values
// stand for AES-encrypted bytes.
const xmlGuardSOAPRequest = `<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <soap:Body>
    <Heartbeat xmlns="http://tempuri.org/">
      <DeviceID>3F2504E0-4F89-11D3-9A0C-0305E82C3301</DeviceID>
      <Payload>q83vASNFZ4mrze8BI0VniT/jW1Z+0cS8p2Yv9n0f3xM=</Payload>
    </Heartbeat>
  </soap:Body>
</soap:Envelope>
`

const xmlGuardSOAPResponse = `<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><HeartbeatResponse xmlns="http://tempuri.org/"><HeartbeatResult>bm9uY2UtMQ==</HeartbeatResult></HeartbeatResponse></soap:Body></soap:Envelope>`

// xmlGuardManager is a plain-HTTP SOAP server that counts the requests it
// receives and keeps their bodies. The request header X-Test-Answer picks
// its behaviour: "" answers xmlGuardSOAPResponse, "doctype" and "deep" answer
// a hostile document, "die" reads the request and drops the connection
// without answering, "die-early" drops it after half the body.
type xmlGuardManager struct {
	*httptest.Server
	mu     sync.Mutex
	bodies [][]byte
}

func startXMLGuardManager(t *testing.T) *xmlGuardManager {
	t.Helper()
	m := &xmlGuardManager{}
	m.Server = httptest.NewServer(http.HandlerFunc(m.serve))
	t.Cleanup(m.Close)
	return m
}

func (m *xmlGuardManager) serve(w http.ResponseWriter, r *http.Request) {
	answer := r.Header.Get("X-Test-Answer")
	var body []byte
	if answer == "die-early" {
		body = make([]byte, r.ContentLength/2)
		io.ReadFull(r.Body, body)
	} else {
		body, _ = io.ReadAll(r.Body)
	}
	m.mu.Lock()
	m.bodies = append(m.bodies, body)
	m.mu.Unlock()

	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	switch answer {
	case "die", "die-early":
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	case "doctype":
		io.WriteString(w, `<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><soap:Envelope xmlns:soap="`+xmlGuardEnvelopeNS+`">&x;</soap:Envelope>`)
	case "deep":
		io.WriteString(w, strings.Repeat("<a>", 5000)+strings.Repeat("</a>", 5000))
	default:
		io.WriteString(w, xmlGuardSOAPResponse)
	}
}

func (m *xmlGuardManager) received() [][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([][]byte(nil), m.bodies...)
}

// startXMLGuardGateway runs a TLS front with xml_guard in front of m and
// returns the URL of the SOAP endpoint; proxyOptions go into reverse_proxy.
func startXMLGuardGateway(t *testing.T, m *xmlGuardManager, proxyOptions string) (*harness.Gateway, string) {
	t.Helper()
	port := harness.FreePort(t)
	g := harness.StartGateway(t, fmt.Sprintf(`{
	grace_period 1s
}

localhost:%d {
	tls internal
	xml_guard /MAWebService2/* {
		max_size 64KiB
		max_depth 32
		max_elements 1000
		roots {%s}Envelope
		soap_actions http://tempuri.org/Heartbeat
	}
	reverse_proxy %s {
		%s
	}
}
`, port, xmlGuardEnvelopeNS, m.Listener.Addr(), proxyOptions))
	g.WaitCertificate(t, "localhost")
	return g, fmt.Sprintf("https://localhost:%d/MAWebService2/MAWebService2.asmx", port)
}

// xmlGuardPost sends body as a SOAP 1.1 request and returns the status and
// body of the answer.
func xmlGuardPost(t *testing.T, c *http.Client, url, body string, header map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	req.Header.Set("SOAPAction", `"http://tempuri.org/Heartbeat"`)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	return resp.StatusCode, got
}

func xmlGuardMetric(t *testing.T, g *harness.Gateway, direction, result, reason string) string {
	t.Helper()
	return guardMetric(t, g, fmt.Sprintf(`legacygate_xml_guard_results_total{direction=%q,reason=%q,result=%q}`, direction, reason, result))
}

func TestXMLGuardEndToEnd(t *testing.T) {
	m := startXMLGuardManager(t)
	g, url := startXMLGuardGateway(t, m, "")
	// Keep-alive: a request with "Connection: close" that is refused
	// before its body is read gets its connection reset instead of the
	// answer (net/http does not drain such a body).
	c := g.Client(t)
	c.Transport.(*http.Transport).DisableKeepAlives = false

	t.Run("valid SOAP passes byte for byte", func(t *testing.T) {
		before := len(m.received())
		status, body := xmlGuardPost(t, c, url, xmlGuardSOAPRequest, nil)
		if status != http.StatusOK || string(body) != xmlGuardSOAPResponse {
			t.Fatalf("client got %d %q, want 200 and the manager's exact bytes", status, body)
		}
		got := m.received()
		if len(got) != before+1 || !bytes.Equal(got[len(got)-1], []byte(xmlGuardSOAPRequest)) {
			t.Fatalf("manager received %d new requests, last %q; want exactly the client's bytes once", len(got)-before, got[len(got)-1])
		}
		if v := xmlGuardMetric(t, g, "request", "passed", "checked"); v != "1" {
			t.Fatalf(`passed request metric is %q, want "1"`, v)
		}
	})

	requests := []struct {
		name   string
		body   string
		header map[string]string
		status int
		reason string
	}{
		{"malformed", `<soap:Envelope xmlns:soap="` + xmlGuardEnvelopeNS + `"><soap:Body></soap:Envelope>`, nil, 400, "malformed_xml"},
		{"doctype", `<!DOCTYPE soap:Envelope SYSTEM "http://attacker.example/x.dtd"><soap:Envelope xmlns:soap="` + xmlGuardEnvelopeNS + `"/>`, nil, 400, "doctype"},
		{"billion laughs", `<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><l>&c;</l>`, nil, 400, "doctype"},
		{"undeclared entity", `<soap:Envelope xmlns:soap="` + xmlGuardEnvelopeNS + `">&xxe;</soap:Envelope>`, nil, 400, "malformed_xml"},
		{"depth 5000", strings.Repeat("<a>", 5000) + strings.Repeat("</a>", 5000), nil, 400, "too_deep"},
		{"oversize", `<soap:Envelope xmlns:soap="` + xmlGuardEnvelopeNS + `">` + strings.Repeat("A", 70<<10) + `</soap:Envelope>`, nil, 413, "too_large"},
		{"wrong namespace", `<Envelope xmlns="http://www.w3.org/2003/05/soap-envelope"/>`, nil, 400, "unlisted_root"},
		{"unlisted action", xmlGuardSOAPRequest, map[string]string{"SOAPAction": `"http://tempuri.org/WipeDevice"`}, 400, "soap_action"},
		{"not XML", `{"DeviceID":"x"}`, map[string]string{"Content-Type": "application/json"}, 415, "content_type"},
	}
	for _, tt := range requests {
		t.Run("request "+tt.name, func(t *testing.T) {
			before := len(m.received())
			status, body := xmlGuardPost(t, c, url, tt.body, tt.header)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %s", status, tt.status, body)
			}
			if n := len(m.received()) - before; n != 0 {
				t.Fatalf("the manager received %d refused requests", n)
			}
			g.WaitLog(t, 5*time.Second, `"xml request refused"`, `"reason":"`+tt.reason+`"`)
			if v := xmlGuardMetric(t, g, "request", "refused", tt.reason); v == "" || v == "0" {
				t.Fatalf("refused request metric for %s is %q", tt.reason, v)
			}
		})
	}

	responses := []struct {
		answer string
		reason string
	}{
		{"doctype", "doctype"},
		{"deep", "too_deep"},
	}
	for _, tt := range responses {
		t.Run("response "+tt.answer, func(t *testing.T) {
			status, body := xmlGuardPost(t, c, url, xmlGuardSOAPRequest, map[string]string{"X-Test-Answer": tt.answer})
			if status != http.StatusBadGateway || bytes.Contains(body, []byte("<")) {
				t.Fatalf("client got %d %q, want 502 and none of the manager's bytes", status, body)
			}
			g.WaitLog(t, 5*time.Second, `"xml response refused"`, `"reason":"`+tt.reason+`"`)
			if v := xmlGuardMetric(t, g, "response", "refused", tt.reason); v != "1" {
				t.Fatalf("refused response metric for %s is %q, want 1", tt.reason, v)
			}
		})
	}
}

// TestXMLGuardRequestIsNeverSentTwice has the manager fail mid-request while
// reverse_proxy is configured to retry: the client gets 502 and the manager
// counted one attempt. With lb_retry_match forcing POST retries, the retries
// are made and refused by xml_guard before a byte reaches the manager, also
// after a keep-alive request to the manager (warm).
func TestXMLGuardRequestIsNeverSentTwice(t *testing.T) {
	const retries = "lb_retries 3\n\t\tlb_try_interval 50ms"
	const forcePOST = "\n\t\tlb_retry_match {\n\t\t\tmethod POST\n\t\t}"
	tests := []struct {
		name    string
		options string
		answer  string
		warm    bool
		forced  bool
	}{
		{"lb_retries, body read then connection dropped", retries, "die", false, false},
		{"lb_retries, connection dropped mid-body", retries, "die-early", false, false},
		{"retries forced for POST", retries + forcePOST, "die", false, true},
		{"retries forced for POST, after a keep-alive request", retries + forcePOST, "die", true, true},
		{"lb_try_duration forced for POST", "lb_try_duration 1s\n\t\tlb_try_interval 50ms" + forcePOST, "die-early", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startXMLGuardManager(t)
			g, url := startXMLGuardGateway(t, m, tt.options)
			c := g.Client(t)
			if tt.warm {
				if status, body := xmlGuardPost(t, c, url, xmlGuardSOAPRequest, nil); status != http.StatusOK {
					t.Fatalf("warm-up request: %d %s", status, body)
				}
			}
			before := len(m.received())
			status, body := xmlGuardPost(t, c, url, xmlGuardSOAPRequest, map[string]string{"X-Test-Answer": tt.answer})
			if status != http.StatusBadGateway {
				t.Fatalf("client got %d %q, want 502", status, body)
			}
			if tt.forced {
				g.WaitLog(t, 5*time.Second, `"xml request not sent again"`, `"reason":"replay"`)
			}
			// Give a retry, if any were made, time to arrive.
			time.Sleep(300 * time.Millisecond)
			got := m.received()[before:]
			if len(got) != 1 {
				t.Fatalf("the manager counted %d attempts, want 1", len(got))
			}
			if len(got[0]) == 0 || !bytes.HasPrefix([]byte(xmlGuardSOAPRequest), got[0]) {
				t.Fatalf("the manager received %q, want (a prefix of) the client's bytes", got[0])
			}
		})
	}
}

// BenchmarkXMLGuardSOAPVsStock sends the SOAP request through one gateway
// process with two TLS sites in front of the same manager: stock
// reverse_proxy, and xml_guard (both directions) + reverse_proxy. Rounds
// alternate so machine noise hits both alike; compare the ns/op.
func BenchmarkXMLGuardSOAPVsStock(b *testing.B) {
	manager := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		io.WriteString(w, xmlGuardSOAPResponse)
	}))
	b.Cleanup(manager.Close)
	stockPort, guardPort := harness.FreePort(b), harness.FreePort(b)
	g := harness.StartGateway(b, fmt.Sprintf(`localhost:%d {
	tls internal
	reverse_proxy %s
}

localhost:%d {
	tls internal
	xml_guard /MAWebService2/* {
		roots {%s}Envelope
	}
	reverse_proxy %s
}
`, stockPort, manager.Listener.Addr(), guardPort, xmlGuardEnvelopeNS, manager.Listener.Addr()))
	g.WaitCertificate(b, "localhost")
	c := g.Client(b)
	tr := c.Transport.(*http.Transport)
	tr.DisableKeepAlives, tr.MaxIdleConnsPerHost = false, 16
	sites := []struct{ name, url string }{
		{"stock", fmt.Sprintf("https://localhost:%d/MAWebService2/MAWebService2.asmx", stockPort)},
		{"xml_guard", fmt.Sprintf("https://localhost:%d/MAWebService2/MAWebService2.asmx", guardPort)},
	}
	for round := range 3 {
		for _, site := range sites {
			b.Run(fmt.Sprintf("round%d/%s", round+1, site.name), func(b *testing.B) {
				b.SetBytes(int64(len(xmlGuardSOAPRequest) + len(xmlGuardSOAPResponse)))
				b.SetParallelism(4)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						req, _ := http.NewRequest(http.MethodPost, site.url, strings.NewReader(xmlGuardSOAPRequest))
						req.Header.Set("Content-Type", "text/xml; charset=utf-8")
						resp, err := c.Do(req)
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
							b.Errorf("%s: status %d", site.name, resp.StatusCode)
							return
						}
					}
				})
			})
		}
	}
}
