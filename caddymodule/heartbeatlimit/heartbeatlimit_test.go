package heartbeatlimit

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/legacygate/legacygate/caddymodule/internal/response"
)

// provisionHeartbeat parses a heartbeat_limit Caddyfile block and provisions
// it, cleaning up when the test ends.
func provisionHeartbeat(t *testing.T, block string) *HeartbeatLimit {
	t.Helper()
	h, err := tryProvisionHeartbeat(t, block)
	if err != nil {
		t.Fatalf("provisioning %q: %v", block, err)
	}
	return h
}

func tryProvisionHeartbeat(t *testing.T, block string) (*HeartbeatLimit, error) {
	t.Helper()
	h := new(HeartbeatLimit)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		return nil, err
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	err := h.Provision(ctx)
	t.Cleanup(func() { _ = h.Cleanup() })
	if err == nil {
		err = h.Validate()
	}
	return h, err
}

// heartbeatRequest builds a request as Caddy hands it to a handler: with a
// replacer and the client_ip variable.
func heartbeatRequest(method, target, clientIP, body string) *http.Request {
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, target, nil)
	} else {
		r = httptest.NewRequest(method, target, strings.NewReader(body))
	}
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: clientIP})
	return r.WithContext(ctx)
}

// countingNext is the rest of the route: it counts requests and keeps the
// last body it received.
type countingNext struct {
	calls int
	body  string
}

func (n *countingNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.calls++
	if r.Body != nil {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		n.body = string(b)
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func serveHeartbeat(t *testing.T, h *HeartbeatLimit, r *http.Request, next caddyhttp.Handler) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	return w
}

func TestHeartbeatLimitCaddyfileSetsEveryField(t *testing.T) {
	h := new(HeartbeatLimit)
	block := `heartbeat_limit {
		zone sepm
		key {http.request.uri.query.hostid} {http.vars.client_ip}
		rate 1/60s
		burst 3
		max_clients 5000
		global_rate 200/1s
		max_wait 2s
		status 503
		jitter 0.5
		body_file /etc/legacygate/later.xml
		distributed {
			zone sepm
			interval 2s
			purge_age 1m
		}
	}`
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		t.Fatal(err)
	}
	twoSeconds := caddy.Duration(2 * time.Second)
	want := HeartbeatLimit{
		Zone: "sepm",
		Key:  []string{"{http.request.uri.query.hostid}", "{http.vars.client_ip}"},
		Rate: "1/60s", Burst: 3, MaxClients: 5000, GlobalRate: "200/1s",
		MaxWait: &twoSeconds, Status: 503, Jitter: 0.5,
		BodyFile: "/etc/legacygate/later.xml",
	}
	d := h.Distributed
	h.Distributed = nil
	if !equalHeartbeatConfig(*h, want) {
		t.Fatalf("parsed %+v, want %+v", *h, want)
	}
	if d == nil || d.Zone != "sepm" || d.Interval != caddy.Duration(2*time.Second) || d.PurgeAge != caddy.Duration(time.Minute) {
		t.Fatalf("distributed = %+v", d)
	}
}

func equalHeartbeatConfig(a, b HeartbeatLimit) bool {
	return a.Zone == b.Zone && strings.Join(a.Key, " ") == strings.Join(b.Key, " ") && a.XMLBodyElement == b.XMLBodyElement &&
		a.Rate == b.Rate && a.Burst == b.Burst && a.MaxClients == b.MaxClients && a.GlobalRate == b.GlobalRate &&
		*a.MaxWait == *b.MaxWait && a.Status == b.Status && a.Jitter == b.Jitter && a.BodyFile == b.BodyFile
}

func TestHeartbeatLimitCaddyfileXMLBodyKey(t *testing.T) {
	h := new(HeartbeatLimit)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("heartbeat_limit {\n key xml_body DeviceID\n rate 1/1s\n}")); err != nil {
		t.Fatal(err)
	}
	if h.XMLBodyElement != "DeviceID" || len(h.Key) != 0 {
		t.Fatalf("xml_body_element = %q, key = %v", h.XMLBodyElement, h.Key)
	}
}

func TestHeartbeatLimitCaddyfileErrors(t *testing.T) {
	tests := []struct{ name, block, want string }{
		{"unknown subdirective", "heartbeat_limit {\n rates 1/1s\n}", `unknown subdirective "rates"`},
		{"burst not a number", "heartbeat_limit {\n burst many\n}", "burst"},
		{"jitter not a number", "heartbeat_limit {\n jitter lots\n}", "jitter"},
		{"max_wait not a duration", "heartbeat_limit {\n max_wait soon\n}", "max_wait"},
		{"rate without argument", "heartbeat_limit {\n rate\n}", "wrong argument count"},
		{"xml_body without element", "heartbeat_limit {\n key xml_body\n}", "xml_body"},
		{"inline argument", "heartbeat_limit 1/1s", "wrong argument count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := new(HeartbeatLimit).UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.block))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestHeartbeatLimitProvisionNamesTheBadField(t *testing.T) {
	tests := []struct{ name, block, want string }{
		{"no rate at all", "heartbeat_limit {\n burst 3\n}", "rate: required"},
		{"rate without slash", "heartbeat_limit {\n rate 60s\n}", "rate: "},
		{"rate with zero count", "heartbeat_limit {\n rate 0/60s\n}", "rate: "},
		{"rate with bad duration", "heartbeat_limit {\n rate 1/sixty\n}", "rate: "},
		{"burst below one", "heartbeat_limit {\n rate 1/1s\n burst -1\n}", "burst -1"},
		{"negative max_clients", "heartbeat_limit {\n rate 1/1s\n max_clients -5\n}", "max_clients -5"},
		{"bad global_rate", "heartbeat_limit {\n global_rate fast\n}", "global_rate: "},
		{"negative max_wait", "heartbeat_limit {\n global_rate 1/1s\n max_wait -1s\n}", "max_wait"},
		{"unknown status", "heartbeat_limit {\n rate 1/1s\n status 302\n}", "status 302"},
		{"jitter of one", "heartbeat_limit {\n rate 1/1s\n jitter 1\n}", "jitter 1"},
		{"negative jitter", "heartbeat_limit {\n rate 1/1s\n jitter -0.1\n}", "jitter -0.1"},
		{"unreadable body_file", "heartbeat_limit {\n rate 1/1s\n body_file /nonexistent/later.xml\n}", "body_file"},
		{"xml_body element with markup", "heartbeat_limit {\n rate 1/1s\n key xml_body <DeviceID>\n}", "xml_body_element"},
		{"distributed without rate", "heartbeat_limit {\n global_rate 1/1s\n distributed\n}", "distributed: needs a per-client rate"},
		{"distributed purge_age too short", "heartbeat_limit {\n rate 1/1s\n distributed {\n interval 10s\n purge_age 5s\n }\n}", "purge_age"},
		{"distributed zone with slash", "heartbeat_limit {\n rate 1/1s\n distributed {\n zone a/b\n }\n}", "zone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tryProvisionHeartbeat(t, tt.block)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestHeartbeatLimitPerClientBurstThenRetryAfter(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key {http.request.uri.query.hostid} {http.vars.client_ip}\n rate 1/60s\n burst 2\n}")
	next := &countingNext{}
	for i := range 2 {
		w := serveHeartbeat(t, h, heartbeatRequest("GET", "/secars/secars.dll?action=index&hostid=H1", "203.0.113.5", ""), next)
		if w.Code != http.StatusOK {
			t.Fatalf("request %d: status %d, want 200", i, w.Code)
		}
	}
	w := serveHeartbeat(t, h, heartbeatRequest("GET", "/secars/secars.dll?action=index&hostid=H1", "203.0.113.5", ""), next)
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "60" {
		t.Fatalf("third request: status %d, Retry-After %q; want 429, 60", w.Code, w.Header().Get("Retry-After"))
	}
	if next.calls != 2 {
		t.Fatalf("the manager saw %d requests, want 2", next.calls)
	}
	// Another host id from the same address, and the same host id from
	// another address, are other clients.
	for _, r := range []*http.Request{
		heartbeatRequest("GET", "/secars/secars.dll?action=index&hostid=H2", "203.0.113.5", ""),
		heartbeatRequest("GET", "/secars/secars.dll?action=index&hostid=H1", "203.0.113.6", ""),
	} {
		if w := serveHeartbeat(t, h, r, next); w.Code != http.StatusOK {
			t.Fatalf("%s from %v: status %d, want 200", r.URL, r.Context().Value(caddyhttp.VarsCtxKey), w.Code)
		}
	}
	if got := testutil.ToFloat64(h.counts.limitedPerClient); got < 1 {
		t.Fatalf("limited per_client counter = %v", got)
	}
}

func TestHeartbeatLimitMissingKeyIsLimitedUnderTheFallbackKey(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key {http.request.uri.query.hostid}\n rate 1/60s\n burst 1\n}")
	next := &countingNext{}
	before := testutil.ToFloat64(h.counts.limitedFallback)
	// Two different clients without a host id share one bucket.
	w1 := serveHeartbeat(t, h, heartbeatRequest("GET", "/secars/secars.dll?action=index", "203.0.113.5", ""), next)
	w2 := serveHeartbeat(t, h, heartbeatRequest("GET", "/secars/secars.dll?action=index&hostid=", "198.51.100.9", ""), next)
	if w1.Code != http.StatusOK || w2.Code != http.StatusTooManyRequests {
		t.Fatalf("statuses %d, %d; want 200 then 429 (shared fallback bucket)", w1.Code, w2.Code)
	}
	if got := testutil.ToFloat64(h.counts.limitedFallback) - before; got != 1 {
		t.Fatalf("limited fallback counter rose by %v, want 1", got)
	}
	// A keyed client is not affected by the fallback bucket.
	if w := serveHeartbeat(t, h, heartbeatRequest("GET", "/?hostid=H9", "203.0.113.5", ""), next); w.Code != http.StatusOK {
		t.Fatalf("keyed client: status %d, want 200", w.Code)
	}
}

func TestHeartbeatLimitCaseVariantsOfAHostIDShareABucket(t *testing.T) {
	tests := []struct {
		name, first, second string
		limited             bool
	}{
		{"value and key case differ", "HOSTID=ab", "hostid=AB", true},
		{"mixed case", "hostid=0a1B2c3D", "HostId=0A1b2C3d", true},
		{"escaped key name", "host%69d=ab", "HOSTID=AB", true},
		{"another host id is another client", "hostid=ab", "hostid=ac", false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := provisionHeartbeat(t, fmt.Sprintf("heartbeat_limit {\n zone case%d\n key {query.hostid}\n rate 1/60s\n burst 1\n}", i))
			next := &countingNext{}
			if w := serveHeartbeat(t, h, heartbeatRequest("GET", "/secars/secars.dll?action=index&"+tt.first, "203.0.113.5", ""), next); w.Code != http.StatusOK {
				t.Fatalf("first request: %d, want 200", w.Code)
			}
			w := serveHeartbeat(t, h, heartbeatRequest("GET", "/secars/secars.dll?action=index&"+tt.second, "203.0.113.5", ""), next)
			want := http.StatusOK
			if tt.limited {
				want = http.StatusTooManyRequests
			}
			if w.Code != want {
				t.Fatalf("%s after %s: %d, want %d", tt.second, tt.first, w.Code, want)
			}
		})
	}
}

func TestHeartbeatLimitRefusesAnAmbiguousKey(t *testing.T) {
	tests := []struct {
		name, key, target string
		headers           []string // X-Endpoint-Id values
		reason            string
	}{
		{"host id twice", "{query.hostid}", "hostid=A&hostid=B", nil, response.ReasonDuplicateKey},
		{"host id twice, same value", "{query.hostid}", "hostid=A&hostid=A", nil, response.ReasonDuplicateKey},
		{"host id twice, case variants of the name", "{query.hostid} {client_ip}", "hostid=A&HOSTID=B", nil, response.ReasonDuplicateKey},
		{"host id twice, one escaped", "{http.request.uri.query.hostid}", "hostid=A&host%69d=B", nil, response.ReasonDuplicateKey},
		{"host id twice, one without value", "{query.hostid}", "hostid&hostid=A", nil, response.ReasonDuplicateKey},
		{"malformed escape in the host id", "{query.hostid}", "hostid=%zz", nil, response.ReasonBadQuery},
		{"name another reader takes for hostid", "{query.hostid}", "hostid%00=A", nil, response.ReasonBadQuery},
		{"key header twice", "{header.X-Endpoint-Id}", "", []string{"E1", "E2"}, response.ReasonDuplicateKey},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := provisionHeartbeat(t, fmt.Sprintf("heartbeat_limit {\n zone dup%d\n key %s\n rate 1/60s\n burst 1\n}", i, tt.key))
			counter := handlerMetrics.requests.WithLabelValues("refused", tt.reason)
			before := testutil.ToFloat64(counter)
			next := &countingNext{}
			r := heartbeatRequest("GET", "/secars/secars.dll?action=index&"+tt.target, "203.0.113.5", "")
			for _, v := range tt.headers {
				r.Header.Add("X-Endpoint-Id", v)
			}
			w := serveHeartbeat(t, h, r, next)
			if w.Code != http.StatusBadRequest || next.calls != 0 {
				t.Fatalf("status %d, %d requests passed on; want 400 and none", w.Code, next.calls)
			}
			if got := testutil.ToFloat64(counter) - before; got != 1 {
				t.Fatalf("refused{%s} rose by %v, want 1", tt.reason, got)
			}
			// The refusal took no token: the client's one request passes.
			r = heartbeatRequest("GET", "/secars/secars.dll?action=index&hostid=A", "203.0.113.5", "")
			r.Header.Set("X-Endpoint-Id", "E1")
			if w := serveHeartbeat(t, h, r, next); w.Code != http.StatusOK {
				t.Fatalf("the client's first unambiguous request: %d, want 200", w.Code)
			}
		})
	}
}

func TestHeartbeatLimitQueryPlaceholderIsAKeyPartOfItsOwn(t *testing.T) {
	for _, key := range []string{"id-{query.hostid}", "{http.request.uri.query.hostid}{client_ip}"} {
		_, err := tryProvisionHeartbeat(t, "heartbeat_limit {\n key "+key+"\n rate 1/60s\n}")
		if err == nil || !strings.Contains(err.Error(), "key: ") || !strings.Contains(err.Error(), "a key part of its own") {
			t.Errorf("key %s: error %v, want one naming key and asking for a part of its own", key, err)
		}
	}
}

const heartbeatSOAP = `<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
 <soap:Body><Register xmlns="http://tempuri.org/"><DeviceID>%s</DeviceID><Payload>` + "QUJD" + `</Payload></Register></soap:Body>
</soap:Envelope>`

func TestHeartbeatLimitXMLBodyKeyFromSOAPAndTheBodyArrivesWhole(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key xml_body DeviceID\n rate 1/60s\n burst 1\n}")
	tests := []struct {
		name, body string
		status     int
	}{
		{"first request of device A", strings.Replace(heartbeatSOAP, "%s", "DEV-A", 1), 200},
		{"device A again", strings.Replace(heartbeatSOAP, "%s", "DEV-A", 1), 429},
		{"device B", strings.Replace(heartbeatSOAP, "%s", "DEV-B", 1), 200},
		{"device B padded past the prefix", strings.Replace(heartbeatSOAP, "%s", "DEV-C", 1) + strings.Repeat(" ", 100<<10), 200},
		{"no device id: fallback", strings.Replace(heartbeatSOAP, "<DeviceID>%s</DeviceID>", "", 1), 200},
		{"malformed XML: fallback, same bucket", "<soap:Envelope><DeviceID>DEV-D</Device", 429},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := &countingNext{}
			w := serveHeartbeat(t, h, heartbeatRequest("POST", "/MAWebService2/MAWebService2.asmx", "203.0.113.5", tt.body), next)
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d", w.Code, tt.status)
			}
			if tt.status == 200 && next.body != tt.body {
				t.Fatalf("the manager received %d bytes, want the whole %d-byte body", len(next.body), len(tt.body))
			}
		})
	}
}

func TestHeartbeatLimitDeviceIDPastThePrefixIsNotRead(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key xml_body DeviceID\n rate 1/60s\n}")
	body := "<Envelope><Pad>" + strings.Repeat("x", xmlPrefix) + "</Pad><DeviceID>LATE</DeviceID></Envelope>"
	r := heartbeatRequest("POST", "/", "203.0.113.5", body)
	if _, keyed, _ := h.clientKey(r); keyed {
		t.Fatal("a device id beyond the 64 KiB prefix was read")
	}
	rest, err := io.ReadAll(r.Body)
	if err != nil || string(rest) != body {
		t.Fatalf("body after key extraction: %d bytes, err %v; want the whole %d", len(rest), err, len(body))
	}
}

func TestHeartbeatLimitBodyFileTemplate(t *testing.T) {
	file := filepath.Join(t.TempDir(), "later.xml")
	index := `<Index><Profile Checksum="0" SerialNumber="LATER"/><RetryAfter>{http.heartbeat_limit.retry_after}</RetryAfter><Reason>{http.heartbeat_limit.reason}</Reason></Index>`
	if err := os.WriteFile(file, []byte(index), 0o644); err != nil {
		t.Fatal(err)
	}
	h := provisionHeartbeat(t, "heartbeat_limit {\n rate 1/30s\n status 503\n body_file "+file+"\n}")
	next := &countingNext{}
	serveHeartbeat(t, h, heartbeatRequest("GET", "/", "203.0.113.5", ""), next)
	w := serveHeartbeat(t, h, heartbeatRequest("GET", "/", "203.0.113.5", ""), next)
	want := `<Index><Profile Checksum="0" SerialNumber="LATER"/><RetryAfter>30</RetryAfter><Reason>per_client</Reason></Index>`
	if w.Code != 503 || w.Body.String() != want {
		t.Fatalf("rejection %d %q, want 503 %q", w.Code, w.Body.String(), want)
	}
	if ct := w.Header().Get("Content-Type"); !strings.Contains(ct, "xml") {
		t.Fatalf("Content-Type %q, want an XML type from the .xml extension", ct)
	}
}

func TestHeartbeatLimitGlobalCeilingRejectsAndRefundsTheClient(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key {http.request.uri.query.hostid}\n rate 1/60s\n burst 1\n global_rate 1/10s\n max_wait 0\n}")
	next := &countingNext{}
	if w := serveHeartbeat(t, h, heartbeatRequest("GET", "/?hostid=A", "203.0.113.5", ""), next); w.Code != 200 {
		t.Fatalf("first request: %d", w.Code)
	}
	w := serveHeartbeat(t, h, heartbeatRequest("GET", "/?hostid=B", "203.0.113.5", ""), next)
	if w.Code != 429 || w.Header().Get("Retry-After") != "10" {
		t.Fatalf("over the ceiling: %d, Retry-After %q; want 429, 10", w.Code, w.Header().Get("Retry-After"))
	}
	if got := testutil.ToFloat64(h.counts.limitedGlobal); got < 1 {
		t.Fatalf("limited global counter = %v", got)
	}
	// B's token was refunded: its own bucket still allows it.
	if ok, _ := h.perClient.Allow(h.hasher.Sum(appendPart(nil, "B"))); !ok {
		t.Fatal("the globally rejected client lost its token")
	}
}

func TestHeartbeatLimitGlobalCeilingWaitsUpToMaxWait(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n global_rate 1/200ms\n max_wait 1s\n}")
	next := &countingNext{}
	start := time.Now()
	for i := range 3 {
		if w := serveHeartbeat(t, h, heartbeatRequest("GET", "/", "203.0.113.5", ""), next); w.Code != 200 {
			t.Fatalf("request %d: %d, want 200 after waiting", i, w.Code)
		}
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("3 requests at 1/200ms took %v, want >= 400ms", took)
	}
}

func TestHeartbeatRetrySecondsWithJitter(t *testing.T) {
	tests := []struct {
		delay     time.Duration
		jitter, u float64
		want      int
	}{
		{60 * time.Second, 0, 0.9, 60},
		{60 * time.Second, 0.5, 0, 60},
		{60 * time.Second, 0.5, 0.5, 75},
		{60 * time.Second, 0.5, 0.999, 90},
		{1500 * time.Millisecond, 0, 0, 2},
		{0, 0.5, 0.5, 1},
		{-time.Second, 0, 0, 1},
	}
	for _, tt := range tests {
		if got := retrySeconds(tt.delay, tt.jitter, tt.u); got != tt.want {
			t.Errorf("retry(%v, jitter %v, u %v) = %d, want %d", tt.delay, tt.jitter, tt.u, got, tt.want)
		}
	}
}

func TestHeartbeatLimitAllowedPathDoesNotAllocate(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key {http.request.uri.query.hostid} {http.vars.client_ip} {http.request.header.User-Agent}\n rate 1000000/1s\n burst 1000000\n global_rate 1000000000/1s\n}")
	r := heartbeatRequest("GET", "/secars/secars.dll?action=index&hostid=0A1B2C3D", "203.0.113.5", "")
	r.Header.Set("User-Agent", "Smc")
	w := discardResponse{header: http.Header{}}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	allocs := testing.AllocsPerRun(1000, func() {
		if err := h.ServeHTTP(w, r, next); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("allowed path: %v allocations per request, want 0", allocs)
	}
}

type discardResponse struct{ header http.Header }

func (d discardResponse) Header() http.Header         { return d.header }
func (d discardResponse) Write(b []byte) (int, error) { return len(b), nil }
func (d discardResponse) WriteHeader(int)             {}

func BenchmarkHeartbeatLimitServeHTTP(b *testing.B) {
	benchAllowedHeartbeat(b, "heartbeat_limit {\n key {http.request.uri.query.hostid} {http.vars.client_ip}\n rate 1000000000/1s\n burst 1000000000\n}")
}

// benchAllowedHeartbeat measures the allowed path of the handler config
// makes.
func benchAllowedHeartbeat(b *testing.B, config string) {
	b.Helper()
	h := new(HeartbeatLimit)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(config)); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	r := heartbeatRequest("GET", "/secars/secars.dll?action=index&hostid=0A1B2C3D", "203.0.113.5", "")
	w := discardResponse{header: http.Header{}}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	b.ReportAllocs()
	for b.Loop() {
		_ = h.ServeHTTP(w, r, next)
	}
}

func TestHeartbeatLimitGaugesCountTrackedKeysAndTheQueue(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key {http.request.uri.query.hostid}\n rate 1/60s\n global_rate 1/1s\n max_wait 3s\n}")
	trackedBefore, queueBefore := testutil.ToFloat64(h.tracked), testutil.ToFloat64(h.queue)
	next := &countingNext{}
	serveHeartbeat(t, h, heartbeatRequest("GET", "/?hostid=A", "203.0.113.5", ""), next)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, heartbeatRequest("GET", "/?hostid=B", "203.0.113.5", ""), next); err != nil || w.Code != 200 {
			t.Errorf("queued request: %d, %v", w.Code, err)
		}
	}()
	waitFor(t, "the queue depth gauge to count the waiting request", func() bool {
		return testutil.ToFloat64(h.queue) == queueBefore+1
	})
	<-done
	if got := testutil.ToFloat64(h.queue); got != queueBefore {
		t.Fatalf("queue depth %v after the wait, want %v", got, queueBefore)
	}
	waitFor(t, "the tracked keys gauge to count 2 keys", func() bool {
		return testutil.ToFloat64(h.tracked) == trackedBefore+2
	})
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(h.tracked); got != trackedBefore {
		t.Fatalf("tracked keys %v after Cleanup, want %v", got, trackedBefore)
	}
}

// heartbeatSpendBurst spends client H1's burst of 2 at h and checks that
// the next request is limited.
func heartbeatSpendBurst(t *testing.T, h *HeartbeatLimit) {
	t.Helper()
	next := &countingNext{}
	for i, want := range []int{http.StatusOK, http.StatusOK, h.Status} {
		if w := serveHeartbeat(t, h, heartbeatRequest("GET", "/?hostid=H1", "203.0.113.5", ""), next); w.Code != want {
			t.Fatalf("request %d: %d, want %d", i, w.Code, want)
		}
	}
}

// TestHeartbeatLimitReloadKeepsTheStateOfAnUnchangedLimiter provisions a
// configuration, spends a client's burst, provisions the next one and
// cleans up the first, as a reload does. The global rate is high enough
// that no request waits for a slot (a starved wake-up would be rejected).
func TestHeartbeatLimitReloadKeepsTheStateOfAnUnchangedLimiter(t *testing.T) {
	const old = "heartbeat_limit {\n key {query.hostid}\n rate 1/1m\n burst 2\n global_rate 1000000/1s\n}"
	tests := []struct {
		name    string
		block   string
		limited bool // H1, having spent its burst, is still limited
		shared  bool // the same limiter state, not a successor
	}{
		{"unchanged", old, true, true},
		{"status and jitter changed", "heartbeat_limit {\n key {query.hostid}\n rate 1/1m\n burst 2\n global_rate 1000000/1s\n status 503\n jitter 0.5\n}", true, true},
		{"same rate written differently", "heartbeat_limit {\n key {query.hostid}\n rate 60/1h\n burst 2\n global_rate 1000000/1s\n}", true, true},
		{"rate changed: the debt carries over", "heartbeat_limit {\n key {query.hostid}\n rate 1/2m\n burst 2\n global_rate 1000000/1s\n}", true, false},
		{"max_clients changed: the debt carries over", "heartbeat_limit {\n key {query.hostid}\n rate 1/1m\n burst 2\n max_clients 5000\n global_rate 1000000/1s\n}", true, false},
		{"global_rate changed: the debt carries over", "heartbeat_limit {\n key {query.hostid}\n rate 1/1m\n burst 2\n global_rate 500000/1s\n}", true, false},
		{"burst raised: one more request", "heartbeat_limit {\n key {query.hostid}\n rate 1/1m\n burst 3\n global_rate 1000000/1s\n}", false, false},
		{"key changed: a new limiter", "heartbeat_limit {\n key {query.hostid} {client_ip}\n rate 1/1m\n burst 2\n global_rate 1000000/1s\n}", false, false},
		{"another zone: a new limiter", "heartbeat_limit {\n zone other\n key {query.hostid}\n rate 1/1m\n burst 2\n global_rate 1000000/1s\n}", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := provisionHeartbeat(t, old)
			heartbeatSpendBurst(t, before)
			// A reload provisions the new configuration, then cleans up
			// the old one.
			after := provisionHeartbeat(t, tt.block)
			if err := before.Cleanup(); err != nil {
				t.Fatal(err)
			}
			if shared := after.perClient == before.perClient && after.ceiling == before.ceiling; shared != tt.shared {
				t.Fatalf("limiter state shared %v, want %v", shared, tt.shared)
			}
			w := serveHeartbeat(t, after, heartbeatRequest("GET", "/?hostid=H1", "203.0.113.5", ""), &countingNext{})
			if limited := w.Code == after.Status; limited != tt.limited {
				t.Fatalf("H1 after the reload: %d; limited %v, want %v", w.Code, limited, tt.limited)
			}
			if tt.limited && w.Header().Get("Retry-After") == "" {
				t.Fatal("a limited H1 got no Retry-After")
			}
		})
	}
}

func TestHeartbeatLimitStatePoolLifecycle(t *testing.T) {
	const block = "heartbeat_limit {\n zone lifecycle\n key {query.hostid}\n rate 1/1m\n burst 2\n}"
	first := provisionHeartbeat(t, block)
	key := first.poolKey
	heartbeatSpendBurst(t, first)

	second := provisionHeartbeat(t, block)
	if second.perClient != first.perClient || second.hasher != first.hasher {
		t.Fatal("two provisions of one configuration do not share the buckets and hash seed")
	}
	if refs, _ := states.References(key); refs != 2 {
		t.Fatalf("%d references to the state, want 2", refs)
	}
	if err := first.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := first.Cleanup(); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
	if refs, ok := states.References(key); !ok || refs != 1 {
		t.Fatalf("after the old configuration's Cleanup: %d references (present %v), want 1", refs, ok)
	}
	if w := serveHeartbeat(t, second, heartbeatRequest("GET", "/?hostid=H1", "203.0.113.5", ""), &countingNext{}); w.Code != http.StatusTooManyRequests {
		t.Fatalf("H1 after the old configuration's Cleanup: %d, want 429", w.Code)
	}

	// A configuration without the block: the last reference goes and the
	// state is freed, so a later configuration starts afresh.
	if err := second.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, ok := states.References(key); ok {
		t.Fatal("the state is still pooled after its last configuration was cleaned up")
	}
	lineages.Lock()
	n := len(lineages.live)
	lineages.Unlock()
	if n != 0 {
		t.Fatalf("%d lineages still listed after every configuration was cleaned up", n)
	}
	third := provisionHeartbeat(t, block)
	if third.perClient == first.perClient {
		t.Fatal("a freed state was reused")
	}
	if w := serveHeartbeat(t, third, heartbeatRequest("GET", "/?hostid=H1", "203.0.113.5", ""), &countingNext{}); w.Code != http.StatusOK {
		t.Fatalf("H1 at a limiter built after the old one was freed: %d, want 200", w.Code)
	}
}

func TestHeartbeatLimitZoneMustAgreeWithDistributedZone(t *testing.T) {
	tests := []struct {
		name, block, want string
	}{
		{"different zones", "heartbeat_limit {\n zone a\n rate 1/1s\n distributed {\n zone b\n storage file_system %s\n }\n}", `zone "a": distributed zone "b" differs`},
		{"slash in zone", "heartbeat_limit {\n zone a/b\n rate 1/1s\n}", `zone "a/b": want a name without slashes`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			block := strings.ReplaceAll(tt.block, "%s", t.TempDir())
			_, err := tryProvisionHeartbeat(t, block)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestHeartbeatLimitFailedReloadKeepsTheCarryOverForTheNextOne(t *testing.T) {
	running := provisionHeartbeat(t, "heartbeat_limit {\n zone failed-reload\n key {query.hostid}\n rate 1/1m\n burst 2\n}")
	heartbeatSpendBurst(t, running)
	// A reload with a new rate whose configuration then fails elsewhere:
	// its handler is provisioned and cleaned up, the old one keeps running.
	failed := provisionHeartbeat(t, "heartbeat_limit {\n zone failed-reload\n key {query.hostid}\n rate 1/2m\n burst 2\n}")
	if err := failed.Cleanup(); err != nil {
		t.Fatal(err)
	}
	next := provisionHeartbeat(t, "heartbeat_limit {\n zone failed-reload\n key {query.hostid}\n rate 1/3m\n burst 2\n}")
	if err := running.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if w := serveHeartbeat(t, next, heartbeatRequest("GET", "/?hostid=H1", "203.0.113.5", ""), &countingNext{}); w.Code != http.StatusTooManyRequests {
		t.Fatalf("H1 after the next reload: %d, want 429 (its debt carried from the running configuration)", w.Code)
	}
}
