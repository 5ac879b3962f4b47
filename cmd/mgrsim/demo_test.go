package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
)

// TestDemoCommandRunsTheGivenLegacygate runs `mgrsim demo --flavor
// policyserver --once --legacygate BIN` (the shortest script) end to end:
// the gateway is a process of the binary passed, and every step behaves.
func TestDemoCommandRunsTheGivenLegacygate(t *testing.T) {
	bin := harness.Binary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := runDemo(ctx, []string{"--flavor", "policyserver", "--once", "--dir", t.TempDir(), "--legacygate", bin}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d, want 0\nstderr: %s\nstdout: %s", code, stderr.String(), stdout.String())
	}
	if !strings.Contains(stdout.String(), "7 of 7 steps behaved as expected") {
		t.Errorf("stdout lacks the steps' verdict:\n%s", stdout.String())
	}
}

func TestDemoCommandRejectsBadFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		code    int
		wantErr string
	}{
		{"stray argument", []string{"extra"}, 2, "unexpected argument"},
		{"unknown flag", []string{"--nope"}, 2, "flag provided but not defined"},
		{"unknown flavor", []string{"--flavor", "nosuch"}, 2, `--flavor: "nosuch"`},
		{"missing binary", []string{"--once", "--legacygate", "/nonexistent/legacygate"}, 1, "/nonexistent/legacygate"},
		{"help", []string{"--help"}, 0, "usage: mgrsim demo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := runDemo(context.Background(), tt.args, io.Discard, &stderr)
			if code != tt.code || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tt.code, tt.wantErr)
			}
		})
	}
}
