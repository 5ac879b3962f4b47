package policyguard

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
)

// runPolicy runs `legacygate policy ARGS` with stdin and returns its output
// and exit code.
func runPolicy(t *testing.T, stdin []byte, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.Binary(t), append([]string{"policy"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("legacygate policy %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), code
}

// mustPolicy runs a policy command that must succeed and returns stdout.
func mustPolicy(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	stdout, stderr, code := runPolicy(t, stdin, args...)
	if code != 0 {
		t.Fatalf("legacygate policy %s: exit %d, stderr:\n%s", strings.Join(args, " "), code, stderr)
	}
	return stdout
}

const policyCmdProfile = `<Profile Checksum="8F1C2A" SerialNumber="A3AF-01/30/2012 23:50:54 284">
 <AntiVirusPolicy Name="default" Enabled="1"><ScanSetting Key="scan" Value="C:\data"/></AntiVirusPolicy>
</Profile>`

// policyKeys makes a manager and a gateway key pair with keygen.
func policyKeys(t *testing.T) (manager, gateway string) {
	t.Helper()
	dir := t.TempDir()
	manager, gateway = filepath.Join(dir, "manager"), filepath.Join(dir, "gateway")
	for _, d := range []string{manager, gateway} {
		out := mustPolicy(t, nil, "keygen", "--out", d, "--cn", filepath.Base(d))
		if !strings.Contains(out, "sha256 ") {
			t.Fatalf("keygen output lacks the fingerprint:\n%s", out)
		}
	}
	return manager, gateway
}

func writeTestFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPolicyKeygenSignVerifyRoundTrip(t *testing.T) {
	_, gateway := policyKeys(t)
	key, cert := filepath.Join(gateway, "gateway.key"), filepath.Join(gateway, "gateway.crt")
	profile := writeTestFile(t, "profile.xml", []byte(policyCmdProfile))

	signed := mustPolicy(t, nil, "sign", "--key", key, "--cert", cert, profile)
	signedFile := writeTestFile(t, "signed.xml", []byte(signed))
	if out := mustPolicy(t, nil, "verify", "--cert", cert, signedFile); !strings.HasPrefix(out, "OK <Profile>") {
		t.Fatalf("verify output %q", out)
	}
	if out := mustPolicy(t, []byte(signed), "verify", "--cert", cert, "-"); !strings.HasPrefix(out, "OK <Profile>") {
		t.Fatalf("verify from stdin output %q", out)
	}
	if stdinSigned := mustPolicy(t, []byte(policyCmdProfile), "sign", "--key", key, "--cert", cert, "-"); !strings.Contains(stdinSigned, "<ds:Signature") {
		t.Fatal("sign from stdin produced no signature")
	}
}

func TestPolicyVerifyTamperedFileExits1WithReason(t *testing.T) {
	manager, gateway := policyKeys(t)
	signed := mustPolicy(t, []byte(policyCmdProfile), "sign", "--key", filepath.Join(gateway, "gateway.key"), "--cert", filepath.Join(gateway, "gateway.crt"), "-")
	tests := []struct {
		name, doc, cert, reason string
	}{
		{"tampered content", strings.Replace(signed, `Name="default"`, `Name="evil"`, 1), filepath.Join(gateway, "gateway.crt"), "digest_mismatch"},
		{"signed by another key", signed, filepath.Join(manager, "gateway.crt"), "untrusted_key"},
		{"unsigned", policyCmdProfile, filepath.Join(gateway, "gateway.crt"), "no_signature"},
		{"DOCTYPE", `<!DOCTYPE p [<!ENTITY x "y">]>` + signed, filepath.Join(gateway, "gateway.crt"), "doctype"},
		{"not XML", "this is not xml <", filepath.Join(gateway, "gateway.crt"), "malformed_xml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := writeTestFile(t, "doc.xml", []byte(tt.doc))
			stdout, stderr, code := runPolicy(t, nil, "verify", "--cert", tt.cert, file)
			if code != 1 || !strings.Contains(stderr, tt.reason) || !strings.Contains(stderr, file) || stdout != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and %q naming the file", code, stdout, stderr, tt.reason)
			}
		})
	}
}

func TestPolicyResign(t *testing.T) {
	manager, gateway := policyKeys(t)
	mKey, mCert := filepath.Join(manager, "gateway.key"), filepath.Join(manager, "gateway.crt")
	gKey, gCert := filepath.Join(gateway, "gateway.key"), filepath.Join(gateway, "gateway.crt")
	fromManager := mustPolicy(t, []byte(policyCmdProfile), "sign", "--key", mKey, "--cert", mCert, "-")

	resigned := mustPolicy(t, []byte(fromManager), "resign", "--upstream-cert", mCert, "--key", gKey, "--cert", gCert, "-")
	mustPolicy(t, []byte(resigned), "verify", "--cert", gCert, "-")
	if _, stderr, code := runPolicy(t, []byte(resigned), "verify", "--cert", mCert, "-"); code != 1 || !strings.Contains(stderr, "untrusted_key") {
		t.Fatalf("re-signed output against the manager's pin: exit %d, %s", code, stderr)
	}
	tampered := strings.Replace(fromManager, `Name="default"`, `Name="evil"`, 1)
	stdout, stderr, code := runPolicy(t, []byte(tampered), "resign", "--upstream-cert", mCert, "--key", gKey, "--cert", gCert, "-")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "digest_mismatch") {
		t.Fatalf("resign of a tampered document: exit %d, stdout %d bytes, stderr %q", code, len(stdout), stderr)
	}
}

func TestPolicyCommandErrors(t *testing.T) {
	_, gateway := policyKeys(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"keygen refuses to overwrite", []string{"keygen", "--out", gateway}, "refusing to overwrite"},
		{"keygen without --out", []string{"keygen"}, "--out DIR is required"},
		{"keygen bad size", []string{"keygen", "--out", t.TempDir(), "--bits", "1024"}, "1024"},
		{"verify without --cert", []string{"verify", "-"}, "--cert FILE is required"},
		{"verify missing file", []string{"verify", "--cert", filepath.Join(gateway, "gateway.crt"), "/nonexistent.xml"}, "/nonexistent.xml"},
		{"sign with a certificate as key", []string{"sign", "--key", filepath.Join(gateway, "gateway.crt"), "--cert", filepath.Join(gateway, "gateway.crt"), "-"}, "gateway.crt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := runPolicy(t, []byte(policyCmdProfile), tt.args...)
			if code != 1 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit 1 mentioning %q", code, stderr, tt.want)
			}
		})
	}
}
