package policyguard

import (
	"strings"
	"testing"

	"github.com/beevik/etree"
)

// twoServers has a server with HTTPS and an HTTP-only one, which
// drop_http_only removes.
const twoServers = `<ServerSettings><CommConf><ServerList><ServerPriorityBlock>` +
	`<Server Address="10.0.0.5" HttpPort="8014" HttpsPort="443"/>` +
	`<Server Address="10.0.0.6" HttpPort="8014"/>` +
	`</ServerPriorityBlock></ServerList></CommConf></ServerSettings>`

// TestGuardRewriteLeavesThePlainServerOfAKeptClient: with drop_http_only,
// a client plaintext_bridge keeps on plain HTTP (an agent that speaks no
// TLS 1.2) keeps its HTTP-only server entry and still gets the next
// certificate in the window; other clients lose it.
func TestGuardRewriteLeavesThePlainServerOfAKeptClient(t *testing.T) {
	a := startApp(t, appBlock(t, t.TempDir(), "a"), &testClock{now: inWindow})
	defer a.KeepClients([]string{"XP-01"})()
	rw := parseGuardRewrite(t, "rewrite {\n roots ServerSettings\n addresses gw.example.com\n https_port 443\n http_port 8014\n drop_http_only\n}")
	if err := rw.validate([]string{"Profile", "ServerSettings"}); err != nil {
		t.Fatal(err)
	}
	s, err := newGuardSigning("", "", rw, a)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		host        string
		wantServers int
	}{{"xp-01", 2}, {"H1", 1}} {
		c := s.choose(clientRequest("GET", "/secars/secars.dll?action=sylink&hostid="+tt.host), []byte(twoServers))
		if c.transform == nil || !c.anchorNext {
			t.Fatalf("%s: transform %v, anchorNext %v; want the next certificate's rewrite", tt.host, c.transform, c.anchorNext)
		}
		doc := etree.NewDocument()
		if err := doc.ReadFromString(twoServers); err != nil {
			t.Fatal(err)
		}
		if err := c.transform.Apply(doc.Root()); err != nil {
			t.Fatal(err)
		}
		servers := doc.FindElements("//Server")
		out, _ := doc.WriteToString()
		if len(servers) != tt.wantServers {
			t.Fatalf("%s: %d servers, want %d:\n%s", tt.host, len(servers), tt.wantServers, out)
		}
		if !strings.Contains(out, "ServerCertificate") {
			t.Fatalf("%s: no certificate embedded:\n%s", tt.host, out)
		}
	}
	if s.keepNext.ID() == s.next.ID() {
		t.Fatal("the kept clients' rewrite has the same id as everyone's: the re-sign cache would mix them")
	}
}
