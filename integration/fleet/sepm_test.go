package fleet

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/beevik/etree"
	dsig "github.com/russellhaering/goxmldsig"

	"github.com/legacygate/legacygate/integration/certs"
)

// fakeSEPM is a small in-test SEPM-style manager whose faults a test sets:
// which key signs, what downloads answer, what the SyLink says. It listens
// on HTTPS (TLS 1.0-1.2, RSA key exchange allowed, like an old Apache) and
// plain HTTP.
type fakeSEPM struct {
	t     testing.TB
	https *httptest.Server
	plain *httptest.Server

	mu             sync.Mutex
	profile        []byte
	profileSerial  string
	sylink         []byte
	sylinkSerial   string
	downloadStatus int    // non-zero: profile and sylink answer this status
	retryAfter     string // sent with downloadStatus and indexStatus
	indexStatus    int    // non-zero: the index answers this status
	generation     int

	hosts       atomic.Int64
	tlsVersions sync.Map // negotiated version → count
	suites      sync.Map // negotiated cipher suite → count
	plainHits   atomic.Int64
	logUploads  atomic.Int64
	logBytes    atomic.Int64
}

func newFakeSEPM(t testing.TB) *fakeSEPM {
	t.Helper()
	m := &fakeSEPM{t: t}
	m.https = httptest.NewUnstartedServer(m)
	m.https.TLS = &tls.Config{
		MinVersion: tls.VersionTLS10,
		MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_RSA_WITH_AES_128_CBC_SHA,
			tls.TLS_RSA_WITH_AES_256_CBC_SHA,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
		},
	}
	m.https.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s != http.StateActive {
			return
		}
		if tc, ok := c.(*tls.Conn); ok {
			st := tc.ConnectionState()
			m.bump(&m.tlsVersions, st.Version)
			m.bump(&m.suites, st.CipherSuite)
		}
	}
	m.https.StartTLS()
	m.plain = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.plainHits.Add(1)
		m.ServeHTTP(w, r)
	}))
	t.Cleanup(m.https.Close)
	t.Cleanup(m.plain.Close)
	return m
}

func (m *fakeSEPM) bump(counts *sync.Map, k uint16) {
	v, _ := counts.LoadOrStore(k, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func (m *fakeSEPM) count(counts *sync.Map, k uint16) int64 {
	v, ok := counts.Load(k)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// ports returns the HTTPS and HTTP ports.
func (m *fakeSEPM) ports() (httpsPort, httpPort int) {
	return portOf(m.t, m.https.Listener.Addr()), portOf(m.t, m.plain.Listener.Addr())
}

func portOf(t testing.TB, a net.Addr) int {
	t.Helper()
	_, p, err := net.SplitHostPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// settings is a one-server list pointing at m, trusting cert.
func (m *fakeSEPM) settings(trusted *certs.Pair) *Settings {
	httpsPort, httpPort := m.ports()
	return &Settings{
		HeartbeatSeconds: 300,
		Blocks: []PriorityBlock{{Name: "Priority1", Servers: []Server{{
			Address: "127.0.0.1", HTTPPort: httpPort, HTTPSPort: httpsPort,
			VerifySignatures: true, Cert: trusted.Cert,
		}}}},
	}
}

// publishProfile signs a new profile with signer.
func (m *fakeSEPM) publishProfile(signer *certs.Pair) {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.generation++
	m.profileSerial = fmt.Sprintf("A3AF-01/30/2012 23:50:%02d %03d", m.generation%60, m.generation)
	body := `<Profile SerialNumber="` + m.profileSerial + `"><AvPolicy Name="av"/>` +
		`<IpsPolicy><Signature Id="20001" Name="not an XML-DSig signature"/></IpsPolicy>` +
		strings.Repeat(`<Rule Action="Allow"/>`, 50) + `</Profile>`
	m.profile = signXML(m.t, body, signer)
}

// publishSyLink signs s with signer and publishes it with a new serial.
func (m *fakeSEPM) publishSyLink(s *Settings, signer *certs.Pair) {
	m.t.Helper()
	doc, err := BuildSyLink(s)
	if err != nil {
		m.t.Fatal(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.generation++
	m.sylinkSerial = "SL-" + strconv.Itoa(m.generation)
	m.sylink = signXML(m.t, string(doc), signer)
}

func (m *fakeSEPM) set(fn func(m *fakeSEPM)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn(m)
}

func (m *fakeSEPM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("User-Agent") != "Smc" {
		http.Error(w, "not an agent", http.StatusForbidden)
		return
	}
	if r.URL.Path == "/secreg/secreg.dll" && r.URL.Query().Get("action") == "register" && r.Method == http.MethodPost {
		if err := r.ParseForm(); err != nil || r.PostForm.Get("hostname") == "" {
			http.Error(w, "4 Bad format.", http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, `<Registration HostId="%032X" Group="%s"/>`, m.hosts.Add(1), r.PostForm.Get("group"))
		return
	}
	if r.URL.Path != "/secars/secars.dll" || r.URL.Query().Get("hostid") == "" {
		http.Error(w, "4 Bad format.", http.StatusBadRequest)
		return
	}
	m.mu.Lock()
	profile, sylink, downloadStatus, indexStatus, retry := m.profile, m.sylink, m.downloadStatus, m.indexStatus, m.retryAfter
	index := fmt.Sprintf(`<Index><Profile Checksum="X" SerialNumber="%s" LastModifiedTime="0"/><SyLink Serial="%s"/></Index>`, m.profileSerial, m.sylinkSerial)
	m.mu.Unlock()
	action := r.URL.Query().Get("action")
	if retry != "" {
		w.Header().Set("Retry-After", retry)
	}
	switch {
	case action == "index" && indexStatus != 0:
		w.WriteHeader(indexStatus)
	case action == "index":
		io.WriteString(w, index)
	case (action == "profile" || action == "sylink") && downloadStatus != 0:
		w.WriteHeader(downloadStatus)
	case action == "profile":
		w.Write(profile)
	case action == "sylink":
		w.Write(sylink)
	case action == "log" && r.Method == http.MethodPost:
		n, _ := io.Copy(io.Discard, r.Body)
		m.logUploads.Add(1)
		m.logBytes.Add(n)
		io.WriteString(w, "OK")
	default:
		http.Error(w, "4 Bad format.", http.StatusBadRequest)
	}
}

// signXML signs the root of doc with an enveloped signature, as a SEPM does:
// exclusive C14N, the certificate in KeyInfo.
func signXML(t testing.TB, doc string, signer *certs.Pair) []byte {
	t.Helper()
	return signXMLWith(t, doc, signer, dsig.RSASHA256SignatureMethod)
}

func signXMLWith(t testing.TB, doc string, signer *certs.Pair, method string) []byte {
	t.Helper()
	d := etree.NewDocument()
	if err := d.ReadFromString(doc); err != nil {
		t.Fatalf("test document: %v", err)
	}
	ctx, err := dsig.NewSigningContext(signer.Key, [][]byte{signer.Cert.Raw})
	if err != nil {
		t.Fatal(err)
	}
	ctx.Canonicalizer = dsig.MakeC14N10ExclusiveCanonicalizerWithPrefixList("")
	if err := ctx.SetSignatureMethod(method); err != nil {
		t.Fatal(err)
	}
	signed, err := ctx.SignEnveloped(d.Root())
	if err != nil {
		t.Fatal(err)
	}
	out := etree.NewDocument()
	out.SetRoot(signed)
	b, err := out.WriteToBytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pairs are made once per test binary: RSA key generation is slow.
var (
	pairsOnce sync.Once
	pairs     [3]*certs.Pair
	pairsErr  error
)

func testPairs(t testing.TB) (a, b, c *certs.Pair) {
	t.Helper()
	pairsOnce.Do(func() {
		for i := range pairs {
			if pairs[i], pairsErr = certs.New(certs.Modern, "sepm.test", 2048); pairsErr != nil {
				return
			}
		}
	})
	if pairsErr != nil {
		t.Fatalf("making test key pairs: %v", pairsErr)
	}
	return pairs[0], pairs[1], pairs[2]
}
