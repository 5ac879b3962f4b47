package caddyarg

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// at returns a dispenser on the subdirective of input (its first token).
func at(t *testing.T, input string) *caddyfile.Dispenser {
	t.Helper()
	d := caddyfile.NewTestDispenser(input)
	if !d.Next() {
		t.Fatalf("no token in %q", input)
	}
	return d
}

func TestHelpersReadValidArguments(t *testing.T) {
	if v, err := One(at(t, "zone a")); err != nil || v != "a" {
		t.Errorf("One = %q, %v", v, err)
	}
	if v, err := Int(at(t, "burst 3"), 1); err != nil || v != 3 {
		t.Errorf("Int = %d, %v", v, err)
	}
	var dur caddy.Duration
	if err := Duration(at(t, "grace 2d"), &dur); err != nil || dur != caddy.Duration(48*60*60*1e9) {
		t.Errorf("Duration = %v, %v", dur, err)
	}
	if v, err := Port(at(t, "https_port 443")); err != nil || v != 443 {
		t.Errorf("Port = %d, %v", v, err)
	}
	if v, err := Size(at(t, "max_size 1KiB")); err != nil || v != 1024 {
		t.Errorf("Size = %d, %v", v, err)
	}
	if v, err := Append(at(t, "roots A B"), []string{"Z"}); err != nil || strings.Join(v, ",") != "Z,A,B" {
		t.Errorf("Append = %v, %v", v, err)
	}
	if err := None(at(t, "allow_sha1")); err != nil {
		t.Errorf("None: %v", err)
	}
	for input, want := range map[string]bool{"requests on": false, "requests off": true} {
		if v, err := Off(at(t, input)); err != nil || v != want {
			t.Errorf("Off(%q) = %v, %v", input, v, err)
		}
	}
	var n int
	if err := Parse(at(t, "status 503"), SetInt(&n)); err != nil || n != 503 {
		t.Errorf("Parse = %d, %v", n, err)
	}
	var s string
	if err := Parse(at(t, "zone z"), SetString(&s)); err != nil || s != "z" {
		t.Errorf("Parse = %q, %v", s, err)
	}
	if err := Parse(at(t, "interval 5s"), SetDuration(&dur)); err != nil || dur != caddy.Duration(5e9) {
		t.Errorf("Parse = %v, %v", dur, err)
	}
}

func TestHelperErrorsNameTheSubdirective(t *testing.T) {
	var dur caddy.Duration
	tests := []struct {
		input string
		read  func(*caddyfile.Dispenser) error
		want  string
	}{
		{"zone", func(d *caddyfile.Dispenser) error { _, err := One(d); return err }, "zone: want exactly one value"},
		{"zone a b", func(d *caddyfile.Dispenser) error { _, err := One(d); return err }, "zone: want exactly one value"},
		{"confirm_heartbeats 0", func(d *caddyfile.Dispenser) error { _, err := Int(d, 1); return err }, `confirm_heartbeats: "0" is not a whole number of at least 1`},
		{"max_depth x", func(d *caddyfile.Dispenser) error { _, err := Int(d, 1); return err }, `max_depth: "x" is not a whole number`},
		{"grace -1d", func(d *caddyfile.Dispenser) error { return Duration(d, &dur) }, `grace: "-1d" is not a positive duration`},
		{"grace 90x", func(d *caddyfile.Dispenser) error { return Duration(d, &dur) }, `grace: "90x" is not a positive duration`},
		{"https_port 70000", func(d *caddyfile.Dispenser) error { _, err := Port(d); return err }, `https_port: "70000" is not a port number`},
		{"max_size lots", func(d *caddyfile.Dispenser) error { _, err := Size(d); return err }, `max_size: "lots" is not a size`},
		{"max_size", func(d *caddyfile.Dispenser) error { _, err := Size(d); return err }, "max_size: want a size"},
		{"max_size 1 2", func(d *caddyfile.Dispenser) error { _, err := Size(d); return err }, "wrong argument count"},
		{"roots", func(d *caddyfile.Dispenser) error { _, err := Append(d, nil); return err }, "roots: want at least one value"},
		{"allow_sha1 yes", None, "allow_sha1 takes no value"},
		{"responses maybe", func(d *caddyfile.Dispenser) error { _, err := Off(d); return err }, `responses: "maybe" is neither on nor off`},
		{"responses", func(d *caddyfile.Dispenser) error { _, err := Off(d); return err }, "responses: want on or off"},
		{"burst many", func(d *caddyfile.Dispenser) error { var n int; return Parse(d, SetInt(&n)) }, `burst "many"`},
		{"rate", func(d *caddyfile.Dispenser) error { var s string; return Parse(d, SetString(&s)) }, "wrong argument count"},
	}
	for _, tt := range tests {
		t.Run(tt.input, func(t *testing.T) {
			err := tt.read(at(t, tt.input))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "legacygate: rotation:") {
				t.Fatalf("error %v names another module", err)
			}
		})
	}
}
