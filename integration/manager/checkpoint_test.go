package manager

import (
	"bytes"
	"crypto/tls"
	"encoding/asn1"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/smallstep/pkcs7"
)

func TestCheckpointHeartbeat(t *testing.T) {
	m := startManager(t, Config{Flavor: "checkpoint", TLSMin: tls.VersionTLS10, TLSMax: tls.VersionTLS12})
	c := testClient(tls.VersionTLS10, tls.VersionTLS10)
	url := "https://" + m.Addrs().HTTPS + CPHeartbeatPath
	tests := []struct {
		name       string
		method     string
		endpointID string
		wantStatus int
	}{
		{"heartbeat with endpoint id", http.MethodPost, "EP-0001", http.StatusOK},
		{"heartbeat without endpoint id", http.MethodPost, "", http.StatusBadRequest},
		{"endpoint id with a space", http.MethodPost, "EP 1", http.StatusBadRequest},
		{"endpoint id too long", http.MethodPost, strings.Repeat("x", 129), http.StatusBadRequest},
		{"GET instead of POST", http.MethodGet, "EP-0001", http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, url, strings.NewReader("status=ok"))
			if err != nil {
				t.Fatal(err)
			}
			if tc.endpointID != "" {
				req.Header.Set(CPEndpointHeader, tc.endpointID)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantStatus != http.StatusOK {
				return
			}
			var hb CPHeartbeat
			if err := json.NewDecoder(resp.Body).Decode(&hb); err != nil {
				t.Fatalf("heartbeat answer: %v", err)
			}
			if hb.Interval != 60 || hb.PolicyVersion != m.flavor.status()["policy_version"] {
				t.Fatalf("answer %+v, want interval 60 and version %q", hb, m.flavor.status()["policy_version"])
			}
		})
	}
	if got := m.Requests(CountCPHeartbeat); got != 1 {
		t.Errorf("heartbeats counted %d, want 1", got)
	}
	if got := m.Requests(CountBad); got != 4 {
		t.Errorf("bad requests counted %d, want 4", got)
	}
}

func TestCheckpointPolicyIsOpaqueAndChangesWithKey(t *testing.T) {
	m := startManager(t, Config{Flavor: "checkpoint"})
	c := testClient(tls.VersionTLS12, tls.VersionTLS12)
	base := "http://" + m.Addrs().HTTP + CPPolicyPrefix
	first := do(t, c, http.MethodGet, base+"firewall", nil, "")
	if first.status != http.StatusOK || first.header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("policy: status %d, type %q", first.status, first.header.Get("Content-Type"))
	}
	if bytes.Contains(first.body, []byte("blade=")) || len(first.body) < 1024 {
		t.Fatalf("policy blob is %d bytes and readable: not encrypted", len(first.body))
	}
	if r := do(t, c, http.MethodGet, base+"nosuchblade", nil, ""); r.status != http.StatusNotFound {
		t.Fatalf("unknown blade: status %d, want 404", r.status)
	}
	if err := m.Regenerate(); err != nil {
		t.Fatal(err)
	}
	if again := do(t, c, http.MethodGet, base+"firewall", nil, ""); bytes.Equal(again.body, first.body) {
		t.Fatal("policy blob unchanged after a key change")
	}
}

func TestCheckpointPackageSignatures(t *testing.T) {
	tests := []struct {
		sign   string
		digest asn1.ObjectIdentifier
	}{
		{SignRSASHA256, pkcs7.OIDDigestAlgorithmSHA256},
		{SignRSASHA1, pkcs7.OIDDigestAlgorithmSHA1},
	}
	for _, tc := range tests {
		t.Run(tc.sign, func(t *testing.T) {
			m := startManager(t, Config{Flavor: "checkpoint", Sign: tc.sign})
			c := testClient(tls.VersionTLS12, tls.VersionTLS12)
			base := "http://" + m.Addrs().HTTP + CPPackagePrefix
			pkg := do(t, c, http.MethodGet, base+CPPackages[0], nil, "")
			sig := do(t, c, http.MethodGet, base+CPPackages[0]+CPSignatureSuffix, nil, "")
			if pkg.status != http.StatusOK || sig.status != http.StatusOK {
				t.Fatalf("package status %d, signature status %d", pkg.status, sig.status)
			}
			p7, err := pkcs7.Parse(sig.body)
			if err != nil {
				t.Fatalf("parsing the .p7s: %v", err)
			}
			if len(p7.Content) != 0 {
				t.Fatal("the .p7s embeds its content: not detached")
			}
			if signer := p7.GetOnlySigner(); signer == nil || !signer.Equal(m.SigningCert()) {
				t.Fatal("the .p7s does not carry the manager's certificate as its signer")
			}
			if got := p7.Signers[0].DigestAlgorithm.Algorithm; !got.Equal(tc.digest) {
				t.Fatalf("digest %v, want %v", got, tc.digest)
			}
			p7.Content = pkg.body
			if err := p7.Verify(); err != nil {
				t.Fatalf("package signature does not verify: %v", err)
			}
			p7.Content = append([]byte{pkg.body[0] ^ 1}, pkg.body[1:]...)
			if err := p7.Verify(); err == nil {
				t.Fatal("a tampered package verifies")
			}
			if r := do(t, c, http.MethodGet, base+"nosuch.msi.p7s", nil, ""); r.status != http.StatusNotFound {
				t.Fatalf("signature of an unknown package: status %d, want 404", r.status)
			}
			if m.Requests(CountCPPackage) != 1 || m.Requests(CountCPSignature) != 1 {
				t.Fatalf("counts %v", m.RequestCounts())
			}
		})
	}
}
