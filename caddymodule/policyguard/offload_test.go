package policyguard

import (
	"crypto/md5"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func md5Hex(s string) string {
	sum := md5.Sum([]byte(s))
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

func indexNaming(serial, checksum string) string {
	return `<?xml version="1.0"?><Index DomainId="D"><Profile Checksum="` + checksum + `" SerialNumber="` + serial + `" LastModifiedTime="1"/><SyLink Serial="X"/></Index>`
}

func offloadRequest(action, host string) *http.Request {
	return httptest.NewRequest(http.MethodGet, "/secars/secars.dll?action="+action+"&hostid="+host, nil)
}

func newOffloadGuard(t *testing.T, cfg Offload) (*testGuard, *time.Time) {
	t.Helper()
	g := newTestGuard(t, 1<<20)
	g.Offload = &cfg
	g.offload = newOffloader(&cfg)
	now := time.Unix(1_800_000_000, 0)
	g.offload.now = func() time.Time { return now }
	return g, &now
}

// offloadHeartbeat has host fetch its index (naming serial and checksum) and then
// its profile (signedProfile, or body when the manager is asked); it
// reports whether the manager was asked for the profile.
func offloadHeartbeat(t *testing.T, g *testGuard, host, serial, checksum, body string) (asked bool, w *httptest.ResponseRecorder) {
	t.Helper()
	serve(t, g, offloadRequest("index", host), &fakeManager{status: 200, body: indexNaming(serial, checksum), header: map[string]string{"Content-Type": "text/xml"}})
	m := &fakeManager{status: 200, body: body, header: map[string]string{"Content-Type": "text/xml; charset=utf-8"}}
	w = serve(t, g, offloadRequest("profile", host), m)
	return m.seenReq != nil, w
}

func TestOffloadServesAProfileTheClientsIndexNamesWithoutAskingTheManager(t *testing.T) {
	g, _ := newOffloadGuard(t, Offload{})
	sum := md5Hex(signedProfile)
	if asked, _ := offloadHeartbeat(t, g, "A", "S1", sum, signedProfile); !asked {
		t.Fatal("the first client's profile was not fetched from the manager")
	}
	asked, w := offloadHeartbeat(t, g, "B", "S1", strings.ToLower(sum), signedProfile)
	if asked {
		t.Fatal("the manager was asked for a profile the gateway holds verified")
	}
	if w.Code != http.StatusOK || w.Body.String() != fakeSigned || w.Header().Get("Etag") != `"gw-1"` || w.Header().Get("Content-Type") != "text/xml; charset=utf-8" {
		t.Fatalf("offloaded answer %d %v %q", w.Code, w.Header(), w.Body)
	}
	if n := g.resultCount(resultSigned, reasonOffloaded); n != 1 {
		t.Fatalf("offloaded count %v, want 1", n)
	}
	if g.fake.calls != 2 {
		t.Fatalf("%d signings, want 2: an offloaded payload is re-signed for its client", g.fake.calls)
	}
}

func TestOffloadAsksTheManagerUnlessTheClientsOwnRecentIndexNamesAHeldProfile(t *testing.T) {
	sum := md5Hex(signedProfile)
	tests := []struct {
		name string
		run  func(t *testing.T, g *testGuard, now *time.Time) bool // asked?
	}{
		{"no index seen for this client", func(t *testing.T, g *testGuard, _ *time.Time) bool {
			m := &fakeManager{status: 200, body: signedProfile}
			serve(t, g, offloadRequest("profile", "C"), m)
			return m.seenReq != nil
		}},
		{"the index names another serial", func(t *testing.T, g *testGuard, _ *time.Time) bool {
			asked, _ := offloadHeartbeat(t, g, "C", "S2", sum, signedProfile)
			return asked
		}},
		{"the index names another checksum", func(t *testing.T, g *testGuard, _ *time.Time) bool {
			asked, _ := offloadHeartbeat(t, g, "C", "S1", md5Hex("other"), signedProfile)
			return asked
		}},
		{"the index is older than max_age", func(t *testing.T, g *testGuard, now *time.Time) bool {
			serve(t, g, offloadRequest("index", "C"), &fakeManager{status: 200, body: indexNaming("S1", sum)})
			*now = now.Add(11 * time.Minute)
			m := &fakeManager{status: 200, body: signedProfile}
			serve(t, g, offloadRequest("profile", "C"), m)
			return m.seenReq != nil
		}},
		{"the client key is repeated", func(t *testing.T, g *testGuard, _ *time.Time) bool {
			serve(t, g, offloadRequest("index", "C"), &fakeManager{status: 200, body: indexNaming("S1", sum)})
			m := &fakeManager{status: 200, body: signedProfile}
			serve(t, g, httptest.NewRequest(http.MethodGet, "/secars/secars.dll?action=profile&hostid=C&hostid=A", nil), m)
			return m.seenReq != nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, now := newOffloadGuard(t, Offload{})
			if asked, _ := offloadHeartbeat(t, g, "A", "S1", sum, signedProfile); !asked {
				t.Fatal("setup: the first profile was not fetched")
			}
			if !tt.run(t, g, now) {
				t.Fatal("the profile was offloaded; the manager must be asked")
			}
		})
	}
}

func TestOffloadNeverHoldsADocumentThatFailedVerificationOrDoesNotMatchItsChecksum(t *testing.T) {
	tampered := strings.Replace(signedProfile, "<Rules/>", "<Rules>tampered</Rules>", 1)
	tests := []struct {
		name, body, checksum string
		wantStatus           int
	}{
		{"failed verification", tampered, md5Hex(tampered), http.StatusBadGateway},
		{"MD5 is not the index's checksum", signedProfile, md5Hex("something else"), http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, _ := newOffloadGuard(t, Offload{})
			if _, w := offloadHeartbeat(t, g, "A", "S1", tt.checksum, tt.body); w.Code != tt.wantStatus {
				t.Fatalf("first client: status %d, want %d", w.Code, tt.wantStatus)
			}
			if asked, _ := offloadHeartbeat(t, g, "B", "S1", tt.checksum, signedProfile); !asked {
				t.Fatal("a document that must not be held was offloaded")
			}
		})
	}
}

func TestOffloadClientTableIsBounded(t *testing.T) {
	g, _ := newOffloadGuard(t, Offload{MaxClients: 2})
	for _, host := range []string{"A", "B", "C", "D"} {
		serve(t, g, offloadRequest("index", host), &fakeManager{status: 200, body: indexNaming("S1", md5Hex(signedProfile))})
	}
	if n := g.offload.clients.Len(); n != 2 {
		t.Fatalf("%d clients remembered, want at most 2", n)
	}
}

func TestUnmarshalOffloadReadsEverySubdirectiveAndValidateNamesTheField(t *testing.T) {
	d := caddyfile.NewTestDispenser(`policy_guard {
		upstream_cert m.crt
		signing_key k.pem c.pem
		roots Profile ServerSettings
		offload {
			client_key {query.id}
			request op getpolicy
			index Idx Pol Ser Sum
			max_clients 10
			max_age 1m
			cache_size 1MiB
		}
	}`)
	var g PolicyGuard
	if err := g.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	want := Offload{ClientKey: "{query.id}", RequestKey: "op", RequestValue: "getpolicy", IndexRoot: "Idx", Element: "Pol",
		SerialAttr: "Ser", ChecksumAttr: "Sum", MaxClients: 10, MaxAge: caddy.Duration(time.Minute), CacheSize: 1 << 20}
	if *g.Offload != want {
		t.Fatalf("got %+v, want %+v", *g.Offload, want)
	}
	if err := g.Validate(); err == nil || !strings.Contains(err.Error(), "policy_guard: offload: index:") {
		t.Fatalf("Validate: %v, want an error naming offload's index (Pol is not a root)", err)
	}
	d = caddyfile.NewTestDispenser(`policy_guard {
		upstream_cert m.crt
		signing_key k.pem c.pem
		roots Profile
		offload
	}`)
	g = PolicyGuard{}
	if err := g.UnmarshalCaddyfile(d); err != nil || g.Offload == nil || g.Validate() != nil {
		t.Fatalf("offload alone: %v, %+v, %v", err, g.Offload, g.Validate())
	}
}
