package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveBinaryMakesCommandLinePathsAbsolute(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "legacygate")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	t.Setenv("PATH", dir)
	tests := []struct {
		name, arg, want, wantErr string
	}{
		{"relative path", "./legacygate", exe, ""},
		{"absolute path", exe, exe, ""},
		{"bare name from PATH", "legacygate", exe, ""},
		{"missing file", "./nothing", "", "no such file"},
		{"not executable", "./notes.txt", "", "not an executable file"},
		{"a directory", dir + "/", "", "not an executable file"},
		{"bare name not in PATH", "no-such-binary", "", "no-such-binary"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveBinary(tc.arg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ResolveBinary(%q) = %q, %v; want an error with %q", tc.arg, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ResolveBinary(%q) = %q, %v; want %q", tc.arg, got, err, tc.want)
			}
		})
	}
}

// TestGatewayLogsAsCaddyfileExampleShips keeps the benchmarked gateway's
// logging the shipped one: reverse_proxy's logger off in the default log.
func TestGatewayLogsAsCaddyfileExampleShips(t *testing.T) {
	example, err := os.ReadFile(filepath.Join("..", "..", "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(example), shippedLogging) {
		t.Fatalf("Caddyfile.example lacks the benchmark's log block:\n%s", shippedLogging)
	}
}
