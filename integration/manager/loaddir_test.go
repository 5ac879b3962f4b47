package manager

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/legacygate/legacygate/integration/certs"
)

func TestLoadDirKeepsTheKeyAManagerLeft(t *testing.T) {
	p, err := certs.New(certs.SHA1, "kept", 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := certs.New(certs.Modern, "other", 2048)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		files   map[string][]byte // nil value: a directory in the file's place (unreadable)
		found   bool
		wantErr string
	}{
		{"empty directory", map[string][]byte{}, false, ""},
		{"pair written by the manager", nil, true, ""},
		{"pair without signing.crt", map[string][]byte{TLSCertFile: p.CertPEM(), TLSKeyFile: p.KeyPEM()}, true, ""},
		{"key only", map[string][]byte{TLSKeyFile: p.KeyPEM()}, false, "tls.crt is missing"},
		{"certificate only", map[string][]byte{TLSCertFile: p.CertPEM()}, false, "tls.key is missing"},
		{"key of another certificate", map[string][]byte{TLSCertFile: p.CertPEM(), TLSKeyFile: other.KeyPEM()}, false, "does not match"},
		{"certificate not PEM", map[string][]byte{TLSCertFile: []byte("junk"), TLSKeyFile: p.KeyPEM()}, false, "no PEM CERTIFICATE block"},
		{"key not PEM", map[string][]byte{TLSCertFile: p.CertPEM(), TLSKeyFile: []byte("junk")}, false, "no PEM block"},
		{"key unreadable", map[string][]byte{TLSCertFile: p.CertPEM(), TLSKeyFile: nil}, false, "reading key"},
		{"signing.crt of another key", map[string][]byte{TLSCertFile: p.CertPEM(), TLSKeyFile: p.KeyPEM(), SigningCertFile: other.CertPEM()}, false, "signing.crt is not the certificate in"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.files == nil {
				if err := writeIdentity(dir, newIdentity(p, 1)); err != nil {
					t.Fatal(err)
				}
			}
			for name, data := range tt.files {
				path := filepath.Join(dir, name)
				if data == nil {
					if err := os.Mkdir(path, 0o755); err != nil {
						t.Fatal(err)
					}
					continue
				}
				if err := os.WriteFile(path, data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, found, err := LoadDir(dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if found != tt.found {
				t.Fatalf("found %v, want %v", found, tt.found)
			}
			if found && got.Pin() != p.Pin() {
				t.Errorf("pin %s, want the pair's %s", got.Pin(), p.Pin())
			}
		})
	}
}

func TestNewWithTheKeptPairServesItsPin(t *testing.T) {
	dir := t.TempDir()
	first, err := New(Config{HTTPSAddr: "127.0.0.1:0", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	pin := first.Pin()
	first.Close()
	kept, found, err := LoadDir(dir)
	if err != nil || !found {
		t.Fatalf("LoadDir after a run: found %v, %v", found, err)
	}
	second, err := New(Config{HTTPSAddr: "127.0.0.1:0", Dir: dir, Initial: kept})
	if err != nil {
		t.Fatal(err)
	}
	if got := second.Pin(); got != pin {
		t.Errorf("restarted manager's pin %s, want %s", got, pin)
	}
}
