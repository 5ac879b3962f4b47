package caddyarg

import "testing"

func TestNearestPicksTheClosestCandidate(t *testing.T) {
	candidates := []string{"pin", "min_version", "max_version", "max_conns", "max_conn_wait"}
	tests := []struct{ in, want string }{
		{"pinn", "pin"},
		{"PIN", "pin"},
		{"min_versoin", "min_version"},
		{"max_con", "max_conns"},
		{"max_conn_wiat", "max_conn_wait"},
		{"maxversion", "max_version"},
	}
	for _, tt := range tests {
		if got := Nearest(tt.in, candidates); got != tt.want {
			t.Errorf("Nearest(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := Nearest("pin", nil); got != "" {
		t.Errorf("Nearest without candidates = %q, want \"\"", got)
	}
}

func TestEditDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"", "abc", 3}, {"abc", "", 3}, {"pin", "pinn", 1}, {"kitten", "sitting", 3}, {"allows", "allow", 1},
	}
	for _, tt := range tests {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
