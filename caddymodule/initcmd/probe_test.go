package initcmd

import (
	"context"
	"crypto/tls"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
)

// testPairs are made once: RSA keys are slow under the race detector.
var testPairs = sync.OnceValue(func() map[certs.Kind]*certs.Pair {
	m := map[certs.Kind]*certs.Pair{}
	for _, k := range []certs.Kind{certs.Modern, certs.SHA1, certs.CNOnly, certs.Expired} {
		p, err := certs.New(k, "sepm.test", 2048)
		if err != nil {
			panic(err)
		}
		m[k] = p
	}
	return m
})

func TestProbeManagerReportsWhatTheManagerAccepts(t *testing.T) {
	rsaKex := []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA}
	tests := []struct {
		name          string
		kind          certs.Kind
		server        *tls.Config
		versions      []uint16
		sha1Cert      bool
		cnOnly        bool
		sha1Handshake bool
		needsSuites   bool // no Go default suite works: cipher_suites must be written
	}{
		{"TLS 1.0 only, SHA-1 certificate", certs.SHA1,
			&tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10},
			[]uint16{tls.VersionTLS10}, true, false, true, false},
		{"TLS 1.0 to 1.2, CN-only", certs.CNOnly,
			&tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS12},
			[]uint16{tls.VersionTLS10, tls.VersionTLS11, tls.VersionTLS12}, false, true, false, false},
		{"TLS 1.2, RSA key exchange only", certs.Modern,
			&tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, CipherSuites: rsaKex},
			[]uint16{tls.VersionTLS12}, false, false, false, true},
		{"TLS 1.2 and 1.3, modern", certs.Modern,
			&tls.Config{MinVersion: tls.VersionTLS12},
			[]uint16{tls.VersionTLS12, tls.VersionTLS13}, false, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pair := testPairs()[tt.kind]
			addr := harness.HandshakeServer(t, pair.TLS(), tt.server)
			p, err := ProbeManager(context.Background(), addr, "", 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(p.Versions, tt.versions) {
				t.Errorf("versions %x, want %x", p.Versions, tt.versions)
			}
			if p.Pin != pair.Pin() {
				t.Errorf("pin %s, want %s", p.Pin, pair.Pin())
			}
			if p.SHA1Certificate() != tt.sha1Cert || p.CNOnly() != tt.cnOnly || p.SHA1HandshakeSignatures != tt.sha1Handshake {
				t.Errorf("sha1 cert %v cn-only %v sha1 handshake %v, want %v %v %v",
					p.SHA1Certificate(), p.CNOnly(), p.SHA1HandshakeSignatures, tt.sha1Cert, tt.cnOnly, tt.sha1Handshake)
			}
			if !p.SelfSigned() {
				t.Error("a self-signed certificate is not reported self-signed")
			}
			if needs := p.Best() != tls.VersionTLS13 && p.DefaultSuitesVersion != p.Best(); needs != tt.needsSuites {
				t.Errorf("needs cipher_suites %v (default suites work up to %x), want %v", needs, p.DefaultSuitesVersion, tt.needsSuites)
			}
			if tt.needsSuites && !slices.Equal(slices.Sorted(slices.Values(p.Suites)), slices.Sorted(slices.Values(rsaKex))) {
				t.Errorf("suites %x, want exactly the RSA key-exchange ones offered", p.Suites)
			}
		})
	}
}

func TestProbeManagerRefusesAnUnreachableManager(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(harness.FreePort(t))
	_, err := ProbeManager(context.Background(), addr, "", 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "unreachable") || !strings.Contains(err.Error(), addr) {
		t.Fatalf("err %v, want the manager named unreachable", err)
	}
}
