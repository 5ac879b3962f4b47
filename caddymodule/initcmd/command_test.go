package initcmd

import (
	"bytes"
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/harness"
)

// legacyManager is a TLS 1.0-only manager with a SHA-1 certificate.
func legacyManager(t *testing.T) string {
	t.Helper()
	return harness.HandshakeServer(t, testPairs()[certs.SHA1].TLS(), &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10})
}

func writeKey(t *testing.T, kind certs.Kind) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "server.key")
	if err := os.WriteFile(file, testPairs()[kind].KeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// placeholderLeft is an environment placeholder without a default: the
// written file must carry a concrete value everywhere but the bind address.
var placeholderLeft = regexp.MustCompile(`\{\$([A-Z_]+)\}`)

func TestRunWritesAConfigurationThatValidates(t *testing.T) {
	harness.Binary(t) // built before the environment changes below
	// Caddy's storage (the internal CA validate makes) in a test folder;
	// HOME stays, or go build would look for a module cache there.
	home := t.TempDir()
	for _, kv := range []string{"XDG_DATA_HOME", "XDG_CONFIG_HOME"} {
		t.Setenv(kv, home)
	}
	addr := legacyManager(t)
	tests := []struct {
		name   string
		opts   Options
		files  []string
		wants  []string
		absent []string
	}{
		{"sepm, gateway key", Options{Flavor: "sepm"},
			[]string{"Caddyfile", "manager.crt", "gateway.key", "gateway.crt", "NEXT-STEPS.txt"},
			[]string{"pin " + testPairs()[certs.SHA1].Pin(), "min_version tls1.0", "allow_sha1 {$LEGACYGATE_ALLOW_SHA1:on}",
				"signing_key " + "OUT/gateway.key", "rewrite {", "handle /content/*", "flush_interval -1", "skip_install_trust",
				"log default {\n\t\texclude http.handlers.reverse_proxy\n\t}"},
			[]string{"legacygate {", "manager.key", "cipher_suites"}},
		{"sepm, day 0", Options{Flavor: "sepm", ManagerKey: writeKey(t, certs.SHA1), WindowStart: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
			[]string{"Caddyfile", "manager.crt", "manager.key", "gateway.key", "gateway.crt", "NEXT-STEPS.txt"},
			[]string{"signing_key current OUT/manager.key OUT/manager.crt", "signing_key next OUT/gateway.key OUT/gateway.crt",
				"window {$LEGACYGATE_WINDOW_START:2027-01-01T00:00:00Z} {$LEGACYGATE_WINDOW_END:2027-01-31T00:00:00Z}"},
			[]string{"\t\t\tsigning_key OUT"}},
		{"checkpoint", Options{Flavor: "checkpoint"}, []string{"Caddyfile", "manager.crt"},
			[]string{"package_guard /epm/packages/*", "upstream_cert OUT/manager.crt"}, nil},
		{"policyserver", Options{Flavor: "policyserver"}, []string{"Caddyfile"},
			[]string{"xml_guard {", "pin " + testPairs()[certs.SHA1].Pin()}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A folder with a space, as C:\Program Files\… is.
			out := filepath.Join(t.TempDir(), "legacy gate")
			o := tt.opts
			o.Manager, o.Out, o.Site = addr, out, "localhost:"+strconv.Itoa(harness.FreePort(t))
			var report bytes.Buffer
			if err := Run(context.Background(), o, &report); err != nil {
				t.Fatal(err)
			}
			for _, f := range tt.files {
				if _, err := os.Stat(filepath.Join(out, f)); err != nil {
					t.Errorf("%s not written: %v", f, err)
				}
			}
			for _, key := range []string{"gateway.key", "manager.key"} {
				if fi, err := os.Stat(filepath.Join(out, key)); err == nil && fi.Mode().Perm() != 0o600 {
					t.Errorf("%s has mode %v, want 0600", key, fi.Mode().Perm())
				}
			}
			caddyfile, err := os.ReadFile(filepath.Join(out, "Caddyfile"))
			if err != nil {
				t.Fatal(err)
			}
			text := string(caddyfile)
			for _, w := range tt.wants {
				if w = quoteOut(w, out); !strings.Contains(text, w) {
					t.Errorf("the Caddyfile lacks %q", w)
				}
			}
			for _, a := range tt.absent {
				if a = quoteOut(a, out); strings.Contains(text, a) {
					t.Errorf("the Caddyfile has %q", a)
				}
			}
			for _, m := range placeholderLeft.FindAllStringSubmatch(text, -1) {
				if m[1] != "LEGACYGATE_BIND" {
					t.Errorf("placeholder without a value left: %s", m[0])
				}
			}
			if stdout, stderr, err := harness.Run(t, "validate", "--config", filepath.Join(out, "Caddyfile")); err != nil {
				t.Fatalf("the written Caddyfile does not validate: %v\n%s%s\n%s", err, stdout, stderr, text)
			}
		})
	}
}

func TestRunRefusesAndWritesNothing(t *testing.T) {
	addr := legacyManager(t)
	encrypted := filepath.Join(t.TempDir(), "enc.key")
	if err := os.WriteFile(encrypted, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"unreachable manager", Options{Manager: "127.0.0.1:" + strconv.Itoa(harness.FreePort(t))}, "unreachable"},
		{"key of another certificate", Options{ManagerKey: writeKey(t, certs.Modern)}, "does not match the manager's certificate"},
		{"encrypted key", Options{ManagerKey: encrypted}, "encrypted"},
		{"missing key file", Options{ManagerKey: filepath.Join(t.TempDir(), "none.key")}, "--manager-key"},
		{"day 0 for a flavor without it", Options{Flavor: "checkpoint", ManagerKey: writeKey(t, certs.SHA1)}, "for sepm"},
		{"unknown flavor", Options{Flavor: "ldap"}, "unknown flavor"},
		{"no port", Options{Manager: "127.0.0.1"}, "want host:port"},
		{"bad site", Options{Site: "a b:1"}, "--site"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			o := tt.opts
			o.Out = out
			if o.Manager == "" {
				o.Manager = addr
			}
			if o.Flavor == "" {
				o.Flavor = "sepm"
			}
			err := Run(context.Background(), o, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
			if entries, _ := os.ReadDir(out); len(entries) > 0 {
				t.Fatalf("%d files written although init refused", len(entries))
			}
		})
	}
}

func TestRunKeepsExistingFilesWithoutForce(t *testing.T) {
	addr := legacyManager(t)
	out := t.TempDir()
	mine := []byte("# my own Caddyfile\n")
	if err := os.WriteFile(filepath.Join(out, "Caddyfile"), mine, 0o644); err != nil {
		t.Fatal(err)
	}
	o := Options{Manager: addr, Flavor: "sepm", Out: out}
	if err := Run(context.Background(), o, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("err %v, want a refusal naming --force", err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "Caddyfile")); !bytes.Equal(got, mine) {
		t.Fatal("the existing Caddyfile was replaced without --force")
	}
	o.Force = true
	if err := Run(context.Background(), o, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "Caddyfile")); bytes.Equal(got, mine) {
		t.Fatal("--force did not replace the Caddyfile")
	}
}

func TestRunTakesTheSigningCertificateFromASyLink(t *testing.T) {
	m, dir := emulatedManager(t)
	out := t.TempDir()
	o := Options{Manager: m.Addrs().HTTPS, Flavor: "sepm", Out: out, SyLink: filepath.Join(dir, "sylink.xml")}
	var report bytes.Buffer
	if err := Run(context.Background(), o, &report); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(out, "manager.crt"))
	if err != nil || !bytes.Equal(got, testPairs()[certs.SHA1].CertPEM()) {
		t.Fatalf("manager.crt is not the SyLink's certificate (err %v)", err)
	}
	if !strings.Contains(report.String(), "from the <ServerCertificate> of") {
		t.Fatalf("the report does not say where the certificate came from:\n%s", report.String())
	}
}

// quoteOut puts the folder out, quoted as the Caddyfile writes it, for
// each OUT/file in s.
func quoteOut(s, out string) string {
	return regexp.MustCompile(`OUT/([a-z.]+)`).ReplaceAllStringFunc(s, func(m string) string {
		return `"` + filepath.Join(out, m[len("OUT/"):]) + `"`
	})
}

func TestInitCommandNamesTheBadFlag(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"init"}, "--manager: the manager's host:port is required"},
		{[]string{"init", "--manager", "127.0.0.1:1", "--window-start", "tomorrow"}, "--window-start"},
		{[]string{"init", "--manager", "127.0.0.1:1", "--out", t.TempDir()}, "unreachable"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, stderr, err := harness.Run(t, tt.args...)
			if err == nil || !strings.Contains(stderr, tt.want) {
				t.Fatalf("err %v, stderr %q, want a failure naming %q", err, stderr, tt.want)
			}
		})
	}
}
