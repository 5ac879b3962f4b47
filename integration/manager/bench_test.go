package manager

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// BenchmarkProfile compares serving the cached signed profile over loopback
// HTTP with the bare cost of signing it once, which is what a manager
// without the cache would pay per request.
func BenchmarkProfile(b *testing.B) {
	m := startManager(b, Config{})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	base := "http://" + m.Addrs().HTTP
	host := register(b, c, base)
	b.Run("served-cached", func(b *testing.B) {
		benchGet(b, c, base+SecarsPath+"?action=profile&hostid="+host)
	})
	b.Run("sign-only", func(b *testing.B) {
		id := m.id.Load()
		unsigned := buildProfile("D", "S", m.cfg.ProfileSize-signatureOverhead(id.pair.Cert.Raw))
		b.SetBytes(int64(len(unsigned)))
		for b.Loop() {
			if _, err := signEnveloped(unsigned, id.pair, SignRSASHA256); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkIndex measures the heartbeat request over plain HTTP and over
// HTTPS (TLS 1.2, keep-alive), against a bare net/http server answering the
// same bytes.
func BenchmarkIndex(b *testing.B) {
	m := startManager(b, Config{})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	host := register(b, c, "http://"+m.Addrs().HTTP)
	b.Run("manager-http", func(b *testing.B) {
		benchGet(b, c, "http://"+m.Addrs().HTTP+SecarsPath+"?action=index&hostid="+host)
	})
	b.Run("manager-https", func(b *testing.B) {
		benchGet(b, c, "https://"+m.Addrs().HTTPS+SecarsPath+"?action=index&hostid="+host)
	})
	b.Run("bare-net/http", func(b *testing.B) {
		index := m.flavor.(*sepm).docs.Load().index
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(index) }), ReadHeaderTimeout: 5 * time.Second}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go srv.Serve(ln)
		defer srv.Close()
		benchGet(b, c, "http://"+ln.Addr().String()+"/")
	})
}

func benchGet(b *testing.B, c *http.Client, url string) {
	b.Helper()
	for b.Loop() {
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
		b.SetBytes(n)
	}
}
