package manager

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/legacygate/legacygate/internal/secars"
)

// realPost sends a real-wire request: POST ?h=<q under kcs>, User-Agent Smc.
func realPost(t *testing.T, base, path, kcs string, q secars.Query, body string) (int, string) {
	t.Helper()
	k, err := secars.NewKey(kcs)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, base+path+"?h="+k.Encode(q, [4]byte{byte(q.Seq)}), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("User-Agent", "Smc")
	if body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	return doRequest(t, req)
}

func doRequest(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestRealWireRegistersIndexesAndServesDefinitions(t *testing.T) {
	m := startManager(t, Config{Wire: WireReal, ContentSize: 64 << 10})
	base := "http://" + m.Addrs().HTTP
	kcs := m.KCS()
	if !strings.Contains(string(m.flavor.(*sepm).settingsDocument()), `Kcs="`+kcs+`"`) {
		t.Fatal("the SyLink does not carry the KCS the manager decodes with")
	}
	status, body := realPost(t, base, SecregPath, kcs, secars.Query{Action: secars.ActionRegister, Hostname: "pc-1"}, "")
	id := regexp.MustCompile(`HostId="([0-9A-F]{32})"`).FindStringSubmatch(body)
	if status != http.StatusOK || id == nil {
		t.Fatalf("register: %d %q", status, body)
	}
	status, body = realPost(t, base, SecarsPath, kcs, secars.Query{Action: secars.ActionIndex, HostID: id[1], Seq: 1}, "")
	if status != http.StatusOK || !strings.Contains(body, `<Content Guid="{`) {
		t.Fatalf("index: %d %q", status, body)
	}
	status, body = doRequest(t, mustRequest(t, http.MethodGet, base+m.ContentPath()))
	if status != http.StatusOK || len(body) != 64<<10 {
		t.Fatalf("content: %d, %d bytes", status, len(body))
	}
	status, body = realPost(t, base, SecarsPath, kcs, secars.Query{Action: secars.ActionLog, HostID: id[1], Seq: 2}, "log")
	if status != http.StatusOK || body != "OK" {
		t.Fatalf("log: %d %q", status, body)
	}
	if m.Requests(CountIndex) != 1 || m.Requests(CountContent) != 1 || m.Requests(CountRegister) != 1 {
		t.Errorf("counts %v", m.RequestCounts())
	}
}

func TestRealWireRefusesWhatARealManagerRefuses(t *testing.T) {
	m := startManager(t, Config{Wire: WireReal, ContentSize: 4096})
	base := "http://" + m.Addrs().HTTP
	_, body := realPost(t, base, SecregPath, m.KCS(), secars.Query{Action: secars.ActionRegister, Hostname: "pc"}, "")
	host := regexp.MustCompile(`[0-9A-F]{32}`).FindString(body)
	index := secars.Query{Action: secars.ActionIndex, HostID: host}
	k, _ := secars.NewKey(m.KCS())
	tests := []struct {
		name   string
		req    *http.Request
		status int
	}{
		{"the wrong KCS", postH(t, base, mustKeyFor(t, "00112233445566778899AABBCCDDEEFF").Encode(index, [4]byte{})), http.StatusBadRequest},
		{"a readable query", mustRequest(t, http.MethodPost, base+SecarsPath+"?action=index&hostid="+host), http.StatusBadRequest},
		{"GET of an index", mustRequest(t, http.MethodGet, base+SecarsPath+"?h="+k.Encode(index, [4]byte{})), http.StatusBadRequest},
		{"h= twice", mustRequest(t, http.MethodPost, base+SecarsPath+"?h=00&h="+k.Encode(index, [4]byte{})), http.StatusBadRequest},
		{"another revision", mustRequest(t, http.MethodGet, base+"/content/{X}/1/full.zip"), http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if status, _ := doRequest(t, tt.req); status != tt.status {
				t.Errorf("status %d, want %d", status, tt.status)
			}
		})
	}
}

func TestCapacityAnswers503WithoutRetryAfterWhenOverloaded(t *testing.T) {
	m := startManager(t, Config{Capacity: 5})
	base := "http://" + m.Addrs().HTTP
	var overloaded int
	for range 20 {
		resp, err := http.Get(base + SecarsPath + "?hello,secars")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			overloaded++
			if resp.Header.Get("Retry-After") != "" {
				t.Error("an overloaded IIS sends no Retry-After")
			}
		}
	}
	if overloaded == 0 || m.Requests(CountOverloaded) != int64(overloaded) {
		t.Errorf("%d overloaded answers, counter %d", overloaded, m.Requests(CountOverloaded))
	}
}

func TestWireIsCheckedAtNew(t *testing.T) {
	for _, cfg := range []Config{
		{HTTPAddr: "127.0.0.1:0", Wire: "binary"},
		{HTTPAddr: "127.0.0.1:0", Wire: WireReal, Flavor: "checkpoint"},
		{HTTPAddr: "127.0.0.1:0", ContentSize: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func mustKeyFor(t *testing.T, kcs string) secars.Key {
	t.Helper()
	k, err := secars.NewKey(kcs)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func postH(t *testing.T, base, h string) *http.Request {
	t.Helper()
	return mustRequest(t, http.MethodPost, base+SecarsPath+"?h="+url.QueryEscape(h))
}

func mustRequest(t *testing.T, method, u string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(nil))
	if err != nil {
		t.Fatal(err)
	}
	return req
}
