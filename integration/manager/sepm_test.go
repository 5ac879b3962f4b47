package manager

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/beevik/etree"
)

func TestSEPMEndpointsAnswerAsProtocolSays(t *testing.T) {
	m := startManager(t, Config{})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	for _, base := range []string{"https://" + m.Addrs().HTTPS, "http://" + m.Addrs().HTTP} {
		host := register(t, c, base)
		tests := []struct {
			name     string
			method   string
			query    string
			body     string
			wantCode int
			check    func(t *testing.T, body []byte)
		}{
			{"hello probe", http.MethodGet, "hello,secars", "", 200, wantBody("OK")},
			{"index", http.MethodGet, "action=index&hostid=" + host, "", 200, checkIndex},
			{"index with lower-case hostid", http.MethodGet, "action=index&hostid=" + strings.ToLower(host), "", 200, checkIndex},
			{"profile", http.MethodGet, "action=profile&hostid=" + host, "", 200, wantRoot("Profile")},
			{"sylink", http.MethodGet, "action=sylink&hostid=" + host, "", 200, checkSyLink(m)},
			{"log upload", http.MethodPost, "action=log&hostid=" + host, strings.Repeat("x", 200<<10), 200, wantBody("OK")},
			{"unknown hostid", http.MethodGet, "action=index&hostid=0123456789ABCDEF0123456789ABCDEF", "", 400, wantBody(BadFormatBody)},
			{"no query", http.MethodGet, "", "", 400, wantBody(BadFormatBody)},
			{"unknown action", http.MethodGet, "action=reboot&hostid=" + host, "", 400, wantBody(BadFormatBody)},
			{"short hostid", http.MethodGet, "action=index&hostid=ABC", "", 400, wantBody(BadFormatBody)},
			{"duplicate key", http.MethodGet, "action=index&action=profile&hostid=" + host, "", 400, wantBody(BadFormatBody)},
			{"register on secars", http.MethodPost, "action=register", "hostname=x", 400, wantBody(BadFormatBody)},
			{"log with GET", http.MethodGet, "action=log&hostid=" + host, "", 400, wantBody(BadFormatBody)},
			{"index with POST", http.MethodPost, "action=index&hostid=" + host, "x", 400, wantBody(BadFormatBody)},
		}
		for _, tt := range tests {
			t.Run(base[:5]+"/"+tt.name, func(t *testing.T) {
				r := do(t, c, tt.method, base+SecarsPath+"?"+tt.query, strings.NewReader(tt.body), "")
				if r.status != tt.wantCode {
					t.Fatalf("status %d, want %d (body %.100q)", r.status, tt.wantCode, r.body)
				}
				tt.check(t, r.body)
			})
		}
	}
}

func wantBody(want string) func(*testing.T, []byte) {
	return func(t *testing.T, body []byte) {
		t.Helper()
		if string(body) != want {
			t.Errorf("body %.100q, want %q", body, want)
		}
	}
}

func parseXML(t *testing.T, body []byte) *etree.Element {
	t.Helper()
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(body); err != nil {
		t.Fatalf("response is not XML: %v (%.100q)", err, body)
	}
	return doc.Root()
}

func wantRoot(tag string) func(*testing.T, []byte) {
	return func(t *testing.T, body []byte) {
		t.Helper()
		if root := parseXML(t, body); root.Tag != tag {
			t.Errorf("root <%s>, want <%s>", root.Tag, tag)
		}
	}
}

var serialPattern = regexp.MustCompile(`^[0-9A-F]{4}-\d\d/\d\d/\d{4} \d\d:\d\d:\d\d \d{3}$`)

func checkIndex(t *testing.T, body []byte) {
	t.Helper()
	root := parseXML(t, body)
	if root.Tag != "Index" {
		t.Fatalf("root <%s>, want <Index>", root.Tag)
	}
	p := root.SelectElement("Profile")
	s := root.SelectElement("SyLink")
	if p == nil || s == nil {
		t.Fatalf("index lacks <Profile> or <SyLink>: %s", body)
	}
	for _, a := range []string{"Checksum", "SerialNumber", "LastModifiedTime"} {
		if p.SelectAttrValue(a, "") == "" {
			t.Errorf("<Profile> lacks %s", a)
		}
	}
	if !serialPattern.MatchString(p.SelectAttrValue("SerialNumber", "")) {
		t.Errorf("profile serial %q is not SEPM-shaped", p.SelectAttrValue("SerialNumber", ""))
	}
	if !serialPattern.MatchString(s.SelectAttrValue("Serial", "")) {
		t.Errorf("SyLink serial %q is not SEPM-shaped", s.SelectAttrValue("Serial", ""))
	}
	if len(body) < 200 || len(body) > 400 {
		t.Errorf("index is %d bytes, want about 300", len(body))
	}
}

func checkSyLink(m *Manager) func(*testing.T, []byte) {
	return func(t *testing.T, body []byte) {
		t.Helper()
		root := parseXML(t, body)
		if root.Tag != "ServerSettings" || root.SelectAttrValue("NameSpace", "") != "rpc" {
			t.Fatalf("root <%s NameSpace=%q>, want <ServerSettings NameSpace=\"rpc\">", root.Tag, root.SelectAttrValue("NameSpace", ""))
		}
		if root.FindElement("CommConf/AgentCommunicationSetting[@Kcs]") == nil {
			t.Error("no AgentCommunicationSetting with Kcs")
		}
		servers := root.FindElements("CommConf/ServerList/ServerPriorityBlock/Server")
		if len(servers) == 0 {
			t.Fatal("no <Server> in the server list")
		}
		for _, s := range servers {
			der, err := base64.StdEncoding.DecodeString(s.FindElement("ServerCertificate").Text())
			if err != nil || !bytes.Equal(der, m.SigningCert().Raw) {
				t.Errorf("<ServerCertificate> is not the signing certificate (err %v)", err)
			}
			for _, a := range []string{"Address", "HttpPort", "HttpsPort", "VerifySignatures", "HttpsVerifyCA"} {
				if s.SelectAttr(a) == nil {
					t.Errorf("<Server> lacks %s", a)
				}
			}
		}
		if root.SelectElement("Signature") == nil {
			t.Error("SyLink is not signed (no enveloped <Signature>)")
		}
	}
}

func TestSEPMProfileSizeAndShape(t *testing.T) {
	for _, size := range []int{8 << 10, 100 << 10, 1 << 20} {
		t.Run(fmt.Sprintf("%d bytes", size), func(t *testing.T) {
			m := startManager(t, Config{ProfileSize: size})
			profile := m.flavor.(*sepm).docs.Load().profile
			if diff := len(profile) - size; diff < -size/20 || diff > size/20 {
				t.Errorf("profile is %d bytes, want %d ±5%%", len(profile), size)
			}
			root := parseXML(t, profile)
			n := countElements(root)
			if size >= 100<<10 && n <= 1000 {
				t.Errorf("profile of %d bytes has %d elements, want more than 1000", len(profile), n)
			}
			for _, section := range []string{"AvPolicy", "FirewallPolicy/Rules/Rule", "IpsPolicy/Signature", "Exceptions/FileException", "DeviceControl/DeviceRule"} {
				if root.FindElement(section) == nil {
					t.Errorf("profile lacks %s", section)
				}
			}
		})
	}
}

func countElements(e *etree.Element) int {
	n := 1
	for _, c := range e.ChildElements() {
		n += countElements(c)
	}
	return n
}

func TestSEPMLogUploadOverLimitIsRefused(t *testing.T) {
	m := startManager(t, Config{MaxLogBytes: 300 << 10})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	base := "http://" + m.Addrs().HTTP
	host := register(t, c, base)
	tests := []struct {
		name    string
		body    func() *bytes.Reader
		chunked bool
		want    int
	}{
		{"exactly the limit", func() *bytes.Reader { return bytes.NewReader(make([]byte, 300<<10)) }, false, 200},
		{"one byte over", func() *bytes.Reader { return bytes.NewReader(make([]byte, 300<<10+1)) }, false, 413},
		{"over, chunked (no Content-Length)", func() *bytes.Reader { return bytes.NewReader(make([]byte, 400<<10)) }, true, 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, base+SecarsPath+"?action=log&hostid="+host, tt.body())
			if err != nil {
				t.Fatal(err)
			}
			if tt.chunked {
				req.ContentLength = -1
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
}

func TestSEPMRegistrationRefusedWhenTableFull(t *testing.T) {
	m := startManager(t, Config{MaxHosts: 1})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	base := "http://" + m.Addrs().HTTP
	register(t, c, base)
	r := do(t, c, http.MethodPost, base+SecregPath+"?action=register", strings.NewReader("hostname=pc-2"), "application/x-www-form-urlencoded")
	if r.status != http.StatusServiceUnavailable {
		t.Errorf("second registration: status %d, want 503", r.status)
	}
}

func TestSEPMRegistrationNeedsHostname(t *testing.T) {
	m := startManager(t, Config{})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	base := "http://" + m.Addrs().HTTP
	tests := []struct{ name, query, form string }{
		{"no hostname", "action=register", "group=G"},
		{"hostname too long", "action=register", "hostname=" + strings.Repeat("a", 256)},
		{"wrong action", "action=index", "hostname=pc"},
		{"no query", "", "hostname=pc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, c, http.MethodPost, base+SecregPath+"?"+tt.query, strings.NewReader(tt.form), "application/x-www-form-urlencoded")
			if r.status != http.StatusBadRequest || string(r.body) != BadFormatBody {
				t.Errorf("status %d body %q, want 400 %q", r.status, r.body, BadFormatBody)
			}
		})
	}
}

func TestSEPMRequestCountsPerEndpoint(t *testing.T) {
	m := startManager(t, Config{})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	base := "https://" + m.Addrs().HTTPS
	host := register(t, c, base)
	for range 3 {
		do(t, c, http.MethodGet, base+SecarsPath+"?action=index&hostid="+host, nil, "")
	}
	do(t, c, http.MethodGet, base+SecarsPath+"?action=profile&hostid="+host, nil, "")
	do(t, c, http.MethodGet, base+SecarsPath+"?bogus", nil, "")
	do(t, c, http.MethodGet, base+"/reporting/index.php", nil, "")
	want := map[string]int64{CountRegister: 1, CountIndex: 3, CountProfile: 1, CountSyLink: 0, CountBad: 1, CountNotFound: 1}
	for name, n := range want {
		if got := m.Requests(name); got != n {
			t.Errorf("Requests(%q) = %d, want %d", name, got, n)
		}
	}
	if got := m.TotalRequests(); got != 7 {
		t.Errorf("TotalRequests() = %d, want 7", got)
	}
}

func TestSEPMBannerHeaders(t *testing.T) {
	m := startManager(t, Config{})
	r := do(t, testClient(tls.VersionTLS12, tls.VersionTLS12), http.MethodGet, "https://"+m.Addrs().HTTPS+SecarsPath+"?hello,secars", nil, "")
	if r.header.Get("Server") != "Apache" || r.header.Get("X-Powered-By") == "" {
		t.Errorf("Server %q, X-Powered-By %q: want the manager's banner headers", r.header.Get("Server"), r.header.Get("X-Powered-By"))
	}
}
