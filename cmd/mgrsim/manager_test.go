package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
)

func TestManagerFlags(t *testing.T) {
	kept := writeManagerDir(t, "")
	mismatched := writeManagerDir(t, manager.TLSKeyFile).dir
	tests := []struct {
		name    string
		args    []string
		check   func(t *testing.T, cfg manager.Config)
		wantErr string
	}{
		{"defaults", nil, func(t *testing.T, cfg manager.Config) {
			if cfg.Flavor != "sepm" || cfg.TLSMin != tls.VersionTLS10 || cfg.TLSMax != tls.VersionTLS12 || cfg.Cert != certs.Modern || cfg.ProfileSize != 100<<10 {
				t.Errorf("defaults %+v", cfg)
			}
		}, ""},
		{"legacy manager", []string{"--tls-min", "1.0", "--tls-max", "1.0", "--cert", "sha1", "--sign", "rsa-sha1", "--profile-size", "500000", "--ciphers", "rsa-kex"}, func(t *testing.T, cfg manager.Config) {
			if cfg.TLSMax != tls.VersionTLS10 || cfg.Cert != certs.SHA1 || cfg.Sign != "rsa-sha1" || cfg.ProfileSize != 500000 || len(cfg.CipherSuites) != len(manager.RSAKexCipherSuites) {
				t.Errorf("parsed %+v", cfg)
			}
		}, ""},
		{"sepm heartbeat default", nil, func(t *testing.T, cfg manager.Config) { checkHeartbeat(t, cfg, 300) }, ""},
		{"checkpoint heartbeat default", []string{"--flavor", "checkpoint"}, func(t *testing.T, cfg manager.Config) { checkHeartbeat(t, cfg, 60) }, ""},
		{"heartbeat given", []string{"--flavor", "checkpoint", "--heartbeat", "90"}, func(t *testing.T, cfg manager.Config) { checkHeartbeat(t, cfg, 90) }, ""},
		{"bad tls-min", []string{"--tls-min", "1.4"}, nil, "--tls-min"},
		{"bad tls-max", []string{"--tls-max", "ssl3"}, nil, "--tls-max"},
		{"bad cert", []string{"--cert", "ecdsa"}, nil, "--cert"},
		{"bad ciphers", []string{"--ciphers", "TLS_FOO"}, nil, "--ciphers"},
		{"stray argument", []string{"sepm"}, nil, "unexpected argument"},
		{"regenerate without dir", []string{"--regenerate"}, nil, "--regenerate: only with --dir"},
		{"empty dir makes a new key", []string{"--dir", t.TempDir()}, func(t *testing.T, cfg manager.Config) {
			if cfg.Initial != nil {
				t.Errorf("empty --dir gave a key pair %s", cfg.Initial.Pin())
			}
		}, ""},
		{"dir with a key reuses it", []string{"--dir", kept.dir}, func(t *testing.T, cfg manager.Config) {
			if cfg.Initial == nil || cfg.Initial.Pin() != kept.pin {
				t.Errorf("--dir with a key pair: Initial %v, want the pair with pin %s", cfg.Initial, kept.pin)
			}
		}, ""},
		{"regenerate ignores the key in dir", []string{"--dir", kept.dir, "--regenerate"}, func(t *testing.T, cfg manager.Config) {
			if cfg.Initial != nil {
				t.Errorf("--regenerate kept the pair %s", cfg.Initial.Pin())
			}
		}, ""},
		{"dir with a mismatched key", []string{"--dir", mismatched}, nil, "does not match"},
		{"mismatch suggests regenerate", []string{"--dir", mismatched}, nil, "--regenerate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := managerFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, cfg)
		})
	}
}

type managerDir struct{ dir, pin string }

// writeManagerDir writes a key pair as mgrsim manager --dir leaves it; with
// replace set, that file is taken from another pair.
func writeManagerDir(t *testing.T, replace string) managerDir {
	t.Helper()
	dir := t.TempDir()
	p, err := certs.New(certs.Modern, "kept", 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := certs.New(certs.Modern, "other", 2048)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{manager.TLSCertFile: p.CertPEM(), manager.TLSKeyFile: p.KeyPEM()}
	if replace != "" {
		files[replace] = map[string][]byte{manager.TLSCertFile: other.CertPEM(), manager.TLSKeyFile: other.KeyPEM()}[replace]
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return managerDir{dir: dir, pin: p.Pin()}
}

// TestManagerProcessSignals runs the real binary: it prints its pin, writes
// its files, regenerates on SIGHUP, imports on SIGUSR1 and exits 0 on SIGTERM.
// checkHeartbeat requires the manager built from cfg to use want seconds.
func checkHeartbeat(t *testing.T, cfg manager.Config, want int) {
	t.Helper()
	cfg.HTTPSAddr, cfg.HTTPAddr = "127.0.0.1:0", ""
	m, err := manager.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Config().HeartbeatSeconds; got != want {
		t.Errorf("flavor %s: heartbeat %d s, want %d", cfg.Flavor, got, want)
	}
}

func TestManagerProcessSignals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "mgrsim")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir, next := filepath.Join(tmp, "dir"), filepath.Join(tmp, "next")
	cmd := exec.CommandContext(ctx, bin, "manager", "--https", "127.0.0.1:0", "--http", "127.0.0.1:0",
		"--tls-max", "1.0", "--cert", "sha1", "--sign", "rsa-sha1", "--profile-size", "8192", "--dir", dir, "--next", next)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 16)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	expect := func(prefix string) string {
		t.Helper()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("mgrsim exited before printing %q", prefix)
				}
				if strings.HasPrefix(l, prefix) {
					return l
				}
			case <-ctx.Done():
				t.Fatalf("no %q line: %v", prefix, ctx.Err())
			}
		}
	}
	pinRE := regexp.MustCompile(`sha256/[A-Za-z0-9+/=]{44}`)

	start := expect("manager: ")
	httpAddr := regexp.MustCompile(`http "([^"]+)"`).FindStringSubmatch(start)[1]
	pin := pinRE.FindString(expect("pin "))
	nextPin := pinRE.FindString(expect("next pin "))
	if got := readPin(t, dir); got != pin {
		t.Fatalf("pin file %q, printed %q", got, pin)
	}
	resp, err := http.Get("http://" + httpAddr + manager.SecarsPath + "?hello,secars")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("hello: status %d", resp.StatusCode)
	}

	cmd.Process.Signal(syscall.SIGHUP)
	regenerated := pinRE.FindString(expect("regenerated: "))
	if regenerated == pin || regenerated == nextPin || readPin(t, dir) != regenerated {
		t.Errorf("after SIGHUP pin %s (file %s), want a new one (was %s)", regenerated, readPin(t, dir), pin)
	}
	cmd.Process.Signal(syscall.SIGUSR1)
	imported := pinRE.FindString(expect("imported: "))
	if imported != nextPin || readPin(t, dir) != nextPin {
		t.Errorf("after SIGUSR1 pin %s (file %s), want the next pin %s", imported, readPin(t, dir), nextPin)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v, want 0", err)
	}

	// Restarted with the same --dir it keeps its key, as a real manager
	// does; --regenerate makes a new one.
	if got := runUntilPin(ctx, t, bin, "--dir", dir); got != nextPin {
		t.Errorf("restart with --dir: pin %s, want the key left in --dir (%s)", got, nextPin)
	}
	if got := runUntilPin(ctx, t, bin, "--dir", dir, "--regenerate"); got == nextPin || readPin(t, dir) != got {
		t.Errorf("restart with --regenerate: pin %s (file %s), want a new one", got, readPin(t, dir))
	}
}

// runUntilPin starts mgrsim manager with args, returns the pin it prints
// and stops it.
func runUntilPin(ctx context.Context, t *testing.T, bin string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, append([]string{"manager", "--https", "127.0.0.1:0", "--http", ""}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("mgrsim manager %v: exit %v, want 0", args, err)
		}
	}()
	s := bufio.NewScanner(stdout)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), "pin ") {
			pin := strings.Fields(s.Text())[1]
			go io.Copy(io.Discard, stdout) // keep the pipe drained until exit
			return pin
		}
	}
	t.Fatalf("mgrsim manager %v exited before printing its pin", args)
	return ""
}

func readPin(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, manager.PinFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
