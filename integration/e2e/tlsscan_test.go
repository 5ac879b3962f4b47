package e2e

import (
	"context"
	"crypto/tls"
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
)

// sslscanReport is the part of `sslscan --xml=-` the scan judges.
type sslscanReport struct {
	Tests []struct {
		Host      string `xml:"host,attr"`
		Port      string `xml:"port,attr"`
		Protocols []struct {
			Type    string `xml:"type,attr"`
			Version string `xml:"version,attr"`
			Enabled string `xml:"enabled,attr"`
		} `xml:"protocol"`
		Ciphers []struct {
			SSLVersion string `xml:"sslversion,attr"`
			Bits       int    `xml:"bits,attr"`
			Cipher     string `xml:"cipher,attr"`
			ECDHEBits  string `xml:"ecdhebits,attr"`
			DHEBits    string `xml:"dhebits,attr"`
		} `xml:"cipher"`
		Groups []struct {
			SSLVersion string `xml:"sslversion,attr"`
			Bits       int    `xml:"bits,attr"`
			Name       string `xml:"name,attr"`
		} `xml:"group"`
	} `xml:"ssltest"`
}

// sslscan runs sslscan against addr (host:port) and parses its XML report.
func sslscan(t *testing.T, addr string) sslscanReport {
	t.Helper()
	bin := guardTool(t, "sslscan")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--xml=-", "--no-colour", addr).Output()
	if err != nil {
		t.Fatalf("sslscan %s: %v\n%s", addr, err, out)
	}
	var rep sslscanReport
	if err := xml.Unmarshal(out, &rep); err != nil {
		t.Fatalf("sslscan %s: unreadable XML: %v\n%s", addr, err, out)
	}
	if len(rep.Tests) != 1 || len(rep.Tests[0].Protocols) == 0 || len(rep.Tests[0].Ciphers) == 0 {
		t.Fatalf("sslscan %s: no protocols or ciphers in the report (did the scan connect?):\n%s", addr, out)
	}
	return rep
}

// tlsScanViolations lists everything in rep a client-facing front must not
// offer: SSL or TLS below 1.2, a TLS 1.2 suite that is not AEAD or not
// ECDHE/DHE (RSA key exchange has no forward secrecy), a cipher under 128
// bits, ECDHE under 224 bits, DHE or a key-exchange group under 2048 bits
// (112-bit security).
func tlsScanViolations(rep sslscanReport) []string {
	var out []string
	for _, test := range rep.Tests {
		for _, p := range test.Protocols {
			if p.Enabled == "1" && (p.Type == "ssl" || p.Version == "1.0" || p.Version == "1.1") {
				out = append(out, fmt.Sprintf("protocol %s %s offered", p.Type, p.Version))
			}
		}
		for _, c := range test.Ciphers {
			name := c.SSLVersion + " " + c.Cipher
			if c.SSLVersion == "TLSv1.2" {
				if !tlsScanAEAD(c.Cipher) {
					out = append(out, name+": not AEAD")
				}
				if !strings.HasPrefix(c.Cipher, "ECDHE-") && !strings.HasPrefix(c.Cipher, "DHE-") {
					out = append(out, name+": RSA (static) key exchange")
				}
			}
			if c.SSLVersion != "TLSv1.2" && c.SSLVersion != "TLSv1.3" {
				out = append(out, name+": below TLS 1.2")
			}
			if c.Bits < 128 {
				out = append(out, fmt.Sprintf("%s: %d-bit cipher", name, c.Bits))
			}
			if n, err := strconv.Atoi(c.ECDHEBits); err == nil && n < 224 {
				out = append(out, fmt.Sprintf("%s: %d-bit ECDHE", name, n))
			}
			if n, err := strconv.Atoi(c.DHEBits); err == nil && n < 2048 {
				out = append(out, fmt.Sprintf("%s: %d-bit DHE", name, n))
			}
		}
		for _, g := range test.Groups {
			if g.Bits < 112 {
				out = append(out, fmt.Sprintf("%s group %s: %d-bit security", g.SSLVersion, g.Name, g.Bits))
			}
		}
	}
	return out
}

func tlsScanAEAD(cipher string) bool {
	for _, aead := range []string{"-GCM-", "CHACHA20-POLY1305", "-CCM"} {
		if strings.Contains(cipher, aead) {
			return true
		}
	}
	return false
}

// TestTLSScanOfTheShippedFrontFindsNothingWeak runs Caddyfile.example as
// shipped (tls internal for localhost) and scans its front with sslscan.
func TestTLSScanOfTheShippedFrontFindsNothingWeak(t *testing.T) {
	guardTool(t, "sslscan")
	mgr, err := certs.New(certs.SHA1, "manager.test", 2048)
	if err != nil {
		t.Fatal(err)
	}
	port := harness.FreePort(t)
	t.Setenv("LEGACYGATE_SITE", fmt.Sprintf("localhost:%d", port))
	t.Setenv("SEPM_MANAGER", "127.0.0.1:1")
	t.Setenv("SEPM_PIN", mgr.Pin())
	t.Setenv("SEPM_SERVER_NAME", "manager.test")
	setExampleKeyFiles(t, mgr)
	g := harness.StartGateway(t, exampleCaddyfile(t))
	g.WaitCertificate(t, "localhost")

	rep := sslscan(t, fmt.Sprintf("localhost:%d", port))
	for _, v := range tlsScanViolations(rep) {
		t.Errorf("the gateway's front offers %s", v)
	}
}

// TestTLSScanFindsWhatALegacyServerOffers scans a server configured like an
// old manager, proving the scan and its judgement see each kind of weakness.
func TestTLSScanFindsWhatALegacyServerOffers(t *testing.T) {
	guardTool(t, "sslscan")
	pair, err := certs.New(certs.Modern, "localhost", 2048)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pair.TLS()},
		MinVersion:   tls.VersionTLS10, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())

	found := strings.Join(tlsScanViolations(sslscan(t, "127.0.0.1:"+port)), "\n")
	for _, want := range []string{"protocol tls 1.0 offered", "protocol tls 1.1 offered", "not AEAD", "RSA (static) key exchange"} {
		if !strings.Contains(found, want) {
			t.Errorf("the scan of a legacy server did not report %q; it reported:\n%s", want, found)
		}
	}
}
