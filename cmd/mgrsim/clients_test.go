package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/fleet"
	"github.com/legacygate/legacygate/integration/manager"
)

func TestClientsFlags(t *testing.T) {
	dir := t.TempDir()
	m := startTestManager(t)
	trust := writeSigningCert(t, m, dir)
	sylink := filepath.Join(dir, "SyLink.xml")
	if err := os.WriteFile(sylink, []byte(`<ServerSettings/>`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"server list from URLs", []string{"--server", "https://127.0.0.1:443,http://127.0.0.1:8014", "--trust", trust}, ""},
		{"sylink file", []string{"--sylink", sylink}, ""},
		{"neither", nil, "--sylink FILE or --server URL is required"},
		{"both", []string{"--sylink", sylink, "--server", "https://127.0.0.1:443"}, "give one of them"},
		{"server without trust", []string{"--server", "https://127.0.0.1:443"}, "needs --trust"},
		{"server with a bad scheme", []string{"--server", "ftp://127.0.0.1:21", "--trust", trust}, "scheme must be https or http"},
		{"server without port", []string{"--server", "https://127.0.0.1", "--trust", trust}, "want scheme://host:port"},
		{"missing sylink file", []string{"--sylink", filepath.Join(dir, "absent.xml")}, "--sylink"},
		{"trust not a certificate", []string{"--sylink", sylink, "--trust", sylink}, "--trust"},
		{"negative duration", []string{"--sylink", sylink, "--duration", "-1s"}, "must not be negative"},
		{"stray argument", []string{"--sylink", sylink, "extra"}, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := clientsFlags(tt.args, io.Discard)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestClientsCommandPrintsSummary(t *testing.T) {
	tests := []struct {
		name         string
		regenerate   bool
		duration     string // long enough for 3 failed heartbeats after the key change on a loaded -race run
		wantExit     int
		wantOrphaned bool
	}{
		{"healthy manager: nobody orphaned", false, "3s", 0, false},
		{"manager regenerates its key: clients orphaned, exit 3", true, "10s", 3, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startTestManager(t)
			trust := writeSigningCert(t, m, t.TempDir())
			a := m.Addrs()
			if tt.regenerate {
				time.AfterFunc(700*time.Millisecond, func() { m.Regenerate() })
			}
			var stdout, stderr bytes.Buffer
			args := []string{"--server", "https://" + a.HTTPS + ",http://" + a.HTTP, "--trust", trust,
				"--count", "20", "--interval", "150ms", "--randomize", "50ms", "--duration", tt.duration,
				"--plaintext-share", "0.5", "--tls10-share", "0.5", "--progress", "1s", "--fail-orphaned"}
			code := runClients(context.Background(), args, &stdout, &stderr)
			if code != tt.wantExit {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.wantExit, stderr.String())
			}
			var s fleet.Summary
			if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
				t.Fatalf("stdout is not one JSON summary: %v\n%s", err, stdout.String())
			}
			if s.Clients != 20 || s.Heartbeats == 0 {
				t.Errorf("summary %+v", s)
			}
			if (s.Orphaned > 0) != tt.wantOrphaned {
				t.Errorf("orphaned %d, want orphans: %v; %+v", s.Orphaned, tt.wantOrphaned, s)
			}
			if !tt.wantOrphaned && s.Online != 20 {
				t.Errorf("online %d, want 20: %+v", s.Online, s)
			}
			if !strings.Contains(stderr.String(), `"heartbeats"`) {
				t.Errorf("--progress printed no summary line to stderr:\n%s", stderr.String())
			}
		})
	}
}

func startTestManager(t *testing.T) *manager.Manager {
	t.Helper()
	m, err := manager.New(manager.Config{HTTPSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ProfileSize: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func writeSigningCert(t *testing.T, m *manager.Manager, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "signing.crt")
	if err := os.WriteFile(path, m.Pair().CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
