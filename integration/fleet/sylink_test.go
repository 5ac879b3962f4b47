package fleet

import (
	"encoding/base64"
	"strings"
	"testing"
)

// protocolSyLink is the SyLink.xml shape of docs/protocol.md, with
// <ServerCertificate> as the emulator writes it; CERT is replaced.
const protocolSyLink = `<?xml version="1.0" encoding="UTF-8"?>
<ServerSettings DomainId="87D0C0A8010A69A" NameSpace="rpc">
 <CommConf>
  <AgentCommunicationSetting CommunicationMode="PULL" Kcs="5CD5AA" PushHeartbeatSeconds="300"
     RandomizationEnabled="1" RandomizationRange="300"/>
  <ServerList Name="Default Management Server List">
   <ServerPriorityBlock Name="Priority1">
    <Server Address="10.0.0.5" HttpPort="8014" HttpsPort="443" VerifySignatures="1" HttpsVerifyCA="0">
     <ServerCertificate>CERT</ServerCertificate>
    </Server>
    <Server Address="sepm2.example.com" HttpPort="8014" HttpsPort="0" VerifySignatures="1" HttpsVerifyCA="0">
     <ServerCertificate>CERT</ServerCertificate>
    </Server>
   </ServerPriorityBlock>
   <ServerPriorityBlock Name="Priority2">
    <Server Address="::1" HttpPort="8014" HttpsPort="" VerifySignatures="0"/>
   </ServerPriorityBlock>
  </ServerList>
 </CommConf>
</ServerSettings>`

func withCert(t testing.TB, doc string) []byte {
	t.Helper()
	a, _, _ := testPairs(t)
	return []byte(strings.ReplaceAll(doc, "CERT", base64.StdEncoding.EncodeToString(a.Cert.Raw)))
}

func TestParseSyLinkReadsProtocolShape(t *testing.T) {
	a, _, _ := testPairs(t)
	s, err := ParseSyLink(withCert(t, protocolSyLink), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.HeartbeatSeconds != 300 || s.RandomizationSeconds != 300 {
		t.Errorf("heartbeat %d, randomization %d, want 300 and 300", s.HeartbeatSeconds, s.RandomizationSeconds)
	}
	if len(s.Blocks) != 2 || len(s.Blocks[0].Servers) != 2 || len(s.Blocks[1].Servers) != 1 {
		t.Fatalf("blocks %+v, want 2 then 1 servers", s.Blocks)
	}
	first, second, third := s.Blocks[0].Servers[0], s.Blocks[0].Servers[1], s.Blocks[1].Servers[0]
	if !first.UsesHTTPS() || first.BaseURL() != "https://10.0.0.5:443" || !first.Cert.Equal(a.Cert) || !first.VerifySignatures || first.VerifyCA {
		t.Errorf("first server %+v", first)
	}
	if second.UsesHTTPS() || second.BaseURL() != "http://sepm2.example.com:8014" {
		t.Errorf("HttpsPort=\"0\" must mean plain HTTP: %+v", second)
	}
	if third.VerifySignatures || third.Cert != nil || third.BaseURL() != "http://[::1]:8014" {
		t.Errorf("third server %+v", third)
	}
	if !s.OnPlaintext() {
		t.Error("OnPlaintext false for a list with HTTP servers")
	}
}

func TestParseSyLinkRejectsBadDocuments(t *testing.T) {
	server := func(attrs string) string {
		return `<ServerSettings><CommConf><ServerList><ServerPriorityBlock Name="P1"><Server ` + attrs +
			`><ServerCertificate>CERT</ServerCertificate></Server></ServerPriorityBlock></ServerList></CommConf></ServerSettings>`
	}
	tests := []struct {
		name, doc, wantErr string
	}{
		{"malformed XML", `<ServerSettings><CommConf>`, "malformed XML"},
		{"wrong root", `<Profile/>`, "want <ServerSettings>"},
		{"DOCTYPE", `<!DOCTYPE x [<!ENTITY a "b">]><ServerSettings/>`, "DOCTYPE"},
		{"no CommConf", `<ServerSettings/>`, "no <CommConf>"},
		{"no ServerList", `<ServerSettings><CommConf/></ServerSettings>`, "no <ServerList>"},
		{"no blocks", `<ServerSettings><CommConf><ServerList/></CommConf></ServerSettings>`, "no <ServerPriorityBlock>"},
		{"empty block", `<ServerSettings><CommConf><ServerList><ServerPriorityBlock Name="P1"/></ServerList></CommConf></ServerSettings>`, `"P1" has no <Server>`},
		{"missing address", server(`HttpsPort="443"`), "missing Address"},
		{"address with a path", server(`Address="evil/x?y" HttpsPort="443"`), "neither a host name"},
		{"port out of range", server(`Address="a" HttpsPort="70000"`), `HttpsPort="70000"`},
		{"port not a number", server(`Address="a" HttpPort="x"`), `HttpPort="x"`},
		{"no port", server(`Address="a"`), "neither HttpPort nor HttpsPort"},
		{"bad heartbeat", `<ServerSettings><CommConf><AgentCommunicationSetting PushHeartbeatSeconds="-1"/></CommConf></ServerSettings>`, "PushHeartbeatSeconds"},
		{"certificate not base64", strings.ReplaceAll(server(`Address="a" HttpsPort="443"`), "CERT", "***"), "not base64"},
		{"certificate not DER", strings.ReplaceAll(server(`Address="a" HttpsPort="443"`), "CERT", "AAAA"), "not a DER certificate"},
		{"no certificate to trust", `<ServerSettings><CommConf><ServerList><ServerPriorityBlock><Server Address="a" HttpsPort="443"/></ServerPriorityBlock></ServerList></CommConf></ServerSettings>`, "no trusted certificate"},
		{"oversize", `<ServerSettings>` + strings.Repeat(" ", maxSyLinkBytes) + `</ServerSettings>`, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSyLink(withCert(t, tt.doc), nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseSyLinkUsesTrustForServersWithoutCertificate(t *testing.T) {
	a, _, _ := testPairs(t)
	doc := `<ServerSettings><CommConf><ServerList><ServerPriorityBlock><Server Address="a" HttpsPort="443"/></ServerPriorityBlock></ServerList></CommConf></ServerSettings>`
	s, err := ParseSyLink([]byte(doc), a.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Blocks[0].Servers[0].Cert.Equal(a.Cert) {
		t.Error("server without <ServerCertificate> does not trust the given certificate")
	}
}

func TestBuildSyLinkRoundTrips(t *testing.T) {
	in, err := ParseSyLink(withCert(t, protocolSyLink), nil)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := BuildSyLink(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParseSyLink(doc, nil)
	if err != nil {
		t.Fatalf("parsing built document: %v\n%s", err, doc)
	}
	if len(out.Blocks) != len(in.Blocks) {
		t.Fatalf("blocks %d, want %d", len(out.Blocks), len(in.Blocks))
	}
	for i := range in.Blocks {
		for j, want := range in.Blocks[i].Servers {
			got := out.Blocks[i].Servers[j]
			if got.BaseURL() != want.BaseURL() || got.VerifySignatures != want.VerifySignatures ||
				(want.Cert == nil) != (got.Cert == nil) || (want.Cert != nil && !want.Cert.Equal(got.Cert)) {
				t.Errorf("server %d/%d: got %+v, want %+v", i, j, got, want)
			}
		}
	}
	if out.HeartbeatSeconds != in.HeartbeatSeconds || out.RandomizationSeconds != in.RandomizationSeconds {
		t.Errorf("heartbeat settings %d/%d, want %d/%d", out.HeartbeatSeconds, out.RandomizationSeconds, in.HeartbeatSeconds, in.RandomizationSeconds)
	}
}

func FuzzParseSyLink(f *testing.F) {
	for _, seed := range []string{
		protocolSyLink,
		`<ServerSettings><CommConf><ServerList><ServerPriorityBlock><Server Address="a" HttpPort="8014" VerifySignatures="0"/></ServerPriorityBlock></ServerList></CommConf></ServerSettings>`,
		`<ServerSettings><CommConf><ServerList><ServerPriorityBlock><Server Address="a" HttpsPort="443"><ServerCertificate>AAAA</ServerCertificate></Server></ServerPriorityBlock></ServerList></CommConf></ServerSettings>`,
		`<!DOCTYPE x><ServerSettings/>`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSyLink(data, nil)
		if err != nil {
			return
		}
		// Whatever parses builds back into a document that parses the same.
		doc, err := BuildSyLink(s)
		if err != nil {
			t.Fatalf("BuildSyLink of a parsed document: %v", err)
		}
		again, err := ParseSyLink(doc, nil)
		if err != nil {
			t.Fatalf("re-parsing a built document: %v\n%s", err, doc)
		}
		if len(again.Blocks) != len(s.Blocks) || again.OnPlaintext() != s.OnPlaintext() {
			t.Fatalf("round trip changed the list: %+v → %+v", s, again)
		}
	})
}
