package handover

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestCaddyfileTakesNoOptions(t *testing.T) {
	tests := []struct {
		input   string
		wantErr string
	}{
		{"legacygate_handover", ""},
		{"legacygate_handover extra", "wrong argument count"},
		{"legacygate_handover {\n\twait 5s\n}", `unknown option "wait"`},
	}
	for _, tt := range tests {
		t.Run(tt.input, func(t *testing.T) {
			err := new(Handover).UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
