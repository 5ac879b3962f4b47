package fleet

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"time"
)

// TLS ceilings a client can have.
const (
	TLS10 = "1.0" // XP-era clients
	TLS12 = "1.2"
)

// xpCipherSuites are what an XP-era client offers at TLS 1.0: RSA key
// exchange with CBC suites first, then ECDHE CBC, then 3DES.
var xpCipherSuites = []uint16{
	tls.TLS_RSA_WITH_AES_128_CBC_SHA,
	tls.TLS_RSA_WITH_AES_256_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
	tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
}

// transportKey is what makes two clients' connections interchangeable.
type transportKey struct {
	tls10    bool
	verifyCA bool
}

// transports holds one shared *http.Client per transportKey, built up front
// (four at most), so workers share connection pools.
type transports struct {
	clients map[transportKey]*http.Client
}

func newTransports(conns int, newConnEach bool, roots *x509.CertPool) *transports {
	t := &transports{clients: make(map[transportKey]*http.Client, 4)}
	for _, tls10 := range []bool{false, true} {
		for _, verifyCA := range []bool{false, true} {
			k := transportKey{tls10: tls10, verifyCA: verifyCA}
			t.clients[k] = &http.Client{
				Transport: newTransport(clientTLS(k, roots), conns, newConnEach),
				// A legacy client does not follow redirects to other servers.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			}
		}
	}
	return t
}

func (t *transports) get(tls10, verifyCA bool) *http.Client {
	return t.clients[transportKey{tls10: tls10, verifyCA: verifyCA}]
}

func (t *transports) close() {
	for _, c := range t.clients {
		c.CloseIdleConnections()
	}
}

// clientTLS is the TLS configuration of a client with this ceiling.
// With HttpsVerifyCA="0" (SEPM's default) the client does not check the
// server's chain: its trust is in the signatures of what it downloads.
func clientTLS(k transportKey, roots *x509.CertPool) *tls.Config {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS10,
		MaxVersion:         tls.VersionTLS12,
		InsecureSkipVerify: !k.verifyCA,
		RootCAs:            roots,
	}
	if k.tls10 {
		cfg.MaxVersion = tls.VersionTLS10
		cfg.CipherSuites = xpCipherSuites
	}
	return cfg
}

func newTransport(cfg *tls.Config, conns int, newConnEach bool) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     cfg,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        conns * 4,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     90 * time.Second,
		DisableKeepAlives:   newConnEach,
		// Legacy agents speak HTTP/1.1 and do not ask for gzip.
		DisableCompression: true,
		TLSNextProto:       map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
}
