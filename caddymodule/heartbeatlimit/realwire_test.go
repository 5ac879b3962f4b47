package heartbeatlimit

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/legacygate/legacygate/internal/secars"
)

const testKCS = "C284EB10FF9F78272464832D48824782"

// realQuery is a real-wire agent request for action by host.
func realQuery(t *testing.T, kcs string, action int, host string, seq uint64) string {
	t.Helper()
	k, err := secars.NewKey(kcs)
	if err != nil {
		t.Fatal(err)
	}
	return "/secars/secars.dll?h=" + k.Encode(secars.Query{Action: action, HostID: host, Seq: seq}, [4]byte{byte(seq), byte(seq >> 8)})
}

// indexNext answers every request with an index for its host.
type indexNext struct{ calls int }

func (n *indexNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.calls++
	w.Header().Set("Content-Type", "text/xml")
	_, err := w.Write([]byte(`<?xml version="1.0"?><Index DomainId="D"><Profile SerialNumber="` + r.Header.Get("X-Host") + `"/></Index>`))
	return err
}

func serve(t *testing.T, h *HeartbeatLimit, r *http.Request, next caddyhttp.Handler) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestKCSKeysEachClientBehindOneAddressByItsHostID(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key {sepm.hostid} {client_ip}\n rate 1/1h\n burst 1\n kcs "+testKCS+"\n}")
	next := &countingNext{}
	hosts := []string{strings.Repeat("A1", 16), strings.Repeat("B2", 16), strings.Repeat("C3", 16)}
	for round := range 2 {
		for i, host := range hosts {
			w := serve(t, h, heartbeatRequest(http.MethodPost, realQuery(t, testKCS, secars.ActionIndex, host, uint64(round*10+i)), "192.0.2.1", ""), next)
			want := http.StatusOK
			if round == 1 {
				want = http.StatusTooManyRequests
			}
			if w.Code != want {
				t.Errorf("round %d host %d: status %d, want %d", round, i, w.Code, want)
			}
		}
	}
	if next.calls != len(hosts) {
		t.Errorf("%d requests passed, want one per host", next.calls)
	}
}

func TestKCSPassesDownloadsAndLimitsWhatDoesNotDecode(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key {sepm.hostid} {client_ip}\n rate 1/1h\n kcs "+testKCS+"\n}")
	next := &countingNext{}
	host := strings.Repeat("A1", 16)
	for i := range 3 {
		if w := serve(t, h, heartbeatRequest(http.MethodPost, realQuery(t, testKCS, secars.ActionProfile, host, uint64(i)), "192.0.2.1", ""), next); w.Code != http.StatusOK {
			t.Fatalf("profile download %d: status %d, want it passed unlimited", i, w.Code)
		}
	}
	wrong := realQuery(t, "00"+testKCS[2:], secars.ActionIndex, host, 1)
	codes := []int{}
	for range 2 {
		codes = append(codes, serve(t, h, heartbeatRequest(http.MethodPost, wrong, "192.0.2.1", ""), next).Code)
	}
	if codes[0] != http.StatusOK || codes[1] != http.StatusTooManyRequests {
		t.Errorf("undecodable queries from one address: %v, want limited by address (200 then 429)", codes)
	}
	dup := realQuery(t, testKCS, secars.ActionIndex, host, 2) + "&h=00"
	if w := serve(t, h, heartbeatRequest(http.MethodPost, dup, "192.0.2.9", ""), next); w.Code != http.StatusBadRequest {
		t.Errorf("h= twice: status %d, want 400", w.Code)
	}
}

func TestKCSIsCheckedAtProvision(t *testing.T) {
	for _, kcs := range []string{"nothex", strings.Repeat("A", 300)} {
		_, err := tryProvisionHeartbeat(t, "heartbeat_limit {\n rate 1/1m\n kcs "+kcs+"\n}")
		if err == nil || !strings.Contains(err.Error(), "kcs") {
			t.Errorf("kcs %q: %v, want an error naming kcs", kcs, err)
		}
	}
	if h := provisionHeartbeat(t, "heartbeat_limit {\n rate 1/1m\n kcs off\n}"); h.sepm != nil {
		t.Error("kcs off decodes queries")
	}
}

func TestLastIndexAnswersALimitedHeartbeatWithItsOwnLastIndex(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key {header.X-Host}\n rate 1/1h\n burst 1\n last_index 2\n}")
	next := &indexNext{}
	get := func(host string) *httptest.ResponseRecorder {
		r := heartbeatRequest(http.MethodGet, "/secars/secars.dll", "192.0.2.1", "")
		r.Header.Set("X-Host", host)
		return serve(t, h, r, next)
	}
	first := get("a").Body.String()
	w := get("a")
	if w.Code != http.StatusOK || w.Body.String() != first || w.Header().Get("Retry-After") != "" {
		t.Fatalf("limited heartbeat: %d %q, want 200 with the last index %q", w.Code, w.Body.String(), first)
	}
	if next.calls != 1 {
		t.Errorf("%d requests reached the manager, want 1", next.calls)
	}
	get("b")
	get("c") // evicts a, the oldest of two
	if w := get("a"); w.Code != http.StatusTooManyRequests || next.calls != 3 {
		t.Errorf("limited key whose index was evicted: status %d, %d calls; want the rejection", w.Code, next.calls)
	}
	if w := get("c"); !strings.Contains(w.Body.String(), `SerialNumber="c"`) {
		t.Errorf("limited c got %q, want c's own index", w.Body.String())
	}
}

func TestLastIndexRemembersOnlyIndexDocuments(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n rate 1/1h\n last_index 10\n}")
	other := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, err := w.Write([]byte(`<ServerSettings/>`))
		return err
	})
	serve(t, h, heartbeatRequest(http.MethodGet, "/secars/secars.dll", "192.0.2.1", ""), other)
	if w := serve(t, h, heartbeatRequest(http.MethodGet, "/secars/secars.dll", "192.0.2.1", ""), other); w.Code != http.StatusTooManyRequests {
		t.Errorf("after a non-index answer, a limited heartbeat got %d, want the rejection", w.Code)
	}
	if _, err := tryProvisionHeartbeat(t, "heartbeat_limit {\n rate 1/1h\n last_index -1\n}"); err == nil || !strings.Contains(err.Error(), "last_index") {
		t.Errorf("last_index -1: %v", err)
	}
}

func FuzzSEPMHeartbeat(f *testing.F) {
	k, _ := secars.NewKey(testKCS)
	f.Add("h=" + k.Encode(secars.Query{Action: secars.ActionIndex, HostID: strings.Repeat("AB", 16)}, [4]byte{}))
	f.Add("h=00&h=11")
	f.Add("H=zz")
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "fuzz"})
	r := &sepmReader{key: k, index: c, other: c, undecoded: c}
	f.Fuzz(func(t *testing.T, raw string) {
		req := heartbeatRequest(http.MethodPost, "/secars/secars.dll", "192.0.2.1", "")
		req.URL.RawQuery = raw
		_, _ = r.heartbeat(req)
	})
}

func TestLastIndexAnswersForAFailingManager(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key {header.X-Host}\n rate 1/1ms\n burst 100\n last_index 10\n}")
	healthy := &indexNext{}
	req := func() *http.Request {
		r := heartbeatRequest(http.MethodGet, "/secars/secars.dll", "192.0.2.1", "")
		r.Header.Set("X-Host", "a")
		return r
	}
	want := serve(t, h, req(), healthy).Body.String()
	failing := []struct {
		name string
		next caddyhttp.Handler
	}{
		{"503 from the manager", caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("X-Manager", "iis")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, err := w.Write([]byte("503.2"))
			return err
		})},
		{"manager unreachable", caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return caddyhttp.Error(http.StatusBadGateway, io.ErrUnexpectedEOF)
		})},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			w := serve(t, h, req(), tt.next)
			if w.Code != http.StatusOK || w.Body.String() != want || w.Header().Get("X-Manager") != "" {
				t.Errorf("got %d %q %v, want 200 with the last index and none of the manager's headers", w.Code, w.Body.String(), w.Header())
			}
		})
	}
	r := heartbeatRequest(http.MethodGet, "/secars/secars.dll", "192.0.2.1", "")
	r.Header.Set("X-Host", "never-seen")
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, failing[1].next); err == nil {
		t.Error("a client without a last index got an answer instead of the manager's error")
	}
}

func TestLastIndexNeverAnswersAnOpaqueQueryWithoutKCS(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n rate 1/1h\n last_index 10\n}")
	next := &indexNext{}
	host := strings.Repeat("A1", 16)
	serve(t, h, heartbeatRequest(http.MethodPost, realQuery(t, testKCS, secars.ActionIndex, host, 1), "192.0.2.1", ""), next)
	// The next request from this address could be a policy download: an
	// index in its place would fail on the client.
	w := serve(t, h, heartbeatRequest(http.MethodPost, realQuery(t, testKCS, secars.ActionProfile, host, 2), "192.0.2.1", ""), next)
	if w.Code != http.StatusTooManyRequests {
		t.Errorf("limited opaque request: %d %q, want the rejection", w.Code, w.Body.String())
	}
}

func TestKCSHoldsOtherAgentRequestsToTheGlobalRateOnly(t *testing.T) {
	h := provisionHeartbeat(t, "heartbeat_limit {\n key {sepm.hostid}\n rate 1/1h\n global_rate 1/1h\n max_wait 0s\n kcs "+testKCS+"\n}")
	next := &countingNext{}
	host := strings.Repeat("A1", 16)
	codes := []int{}
	for i := range 2 {
		codes = append(codes, serve(t, h, heartbeatRequest(http.MethodPost, realQuery(t, testKCS, secars.ActionLog, host, uint64(i)), "192.0.2.1", ""), next).Code)
	}
	if codes[0] != http.StatusOK || codes[1] != http.StatusTooManyRequests {
		t.Errorf("log uploads under global_rate 1/1h: %v, want 200 then 429", codes)
	}
}

func TestLastIndexDropsBodiesNoKeyHoldsAndBoundsDistinctOnes(t *testing.T) {
	c := &indexCache{max: 2, root: []byte("Index"), keys: map[uint64]*indexAnswer{}, bodies: map[[32]byte]*indexAnswer{},
		stored: prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})}
	doc := func(i int) []byte { return []byte(`<Index Serial="` + strings.Repeat("x", i) + `"/>`) }
	c.put(1, doc(1), "text/xml")
	c.put(1, doc(1), "text/xml") // the same body again keeps it
	c.put(1, doc(2), "text/xml") // replaces key 1's body: doc(1) is dropped
	c.put(2, doc(2), "text/xml") // shares doc(2)
	c.put(3, doc(3), "text/xml") // evicts key 1
	if len(c.bodies) != 2 || len(c.keys) != 2 || c.bytes != len(doc(2))+len(doc(3)) {
		t.Errorf("%d bodies, %d keys, %d bytes; want 2, 2, %d", len(c.bodies), len(c.keys), c.bytes, len(doc(2))+len(doc(3)))
	}
	for i := range maxDistinctIndex + 10 {
		c.put(uint64(100+i), doc(10+i%50), "text/xml")
	}
	if len(c.bodies) > maxDistinctIndex || len(c.keys) > 2 {
		t.Errorf("%d bodies, %d keys held", len(c.bodies), len(c.keys))
	}
}
