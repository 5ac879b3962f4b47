// Package harness runs real legacygate processes for end-to-end tests: it
// builds the binary once per test process, picks free loopback ports, starts
// `legacygate run` with a Caddyfile, waits until the configuration is served,
// reloads it, and stops the process when the test ends.
//
// Every gateway gets its own admin address, storage directory and HTTP/HTTPS
// default ports, so tests can run in parallel and never touch the machine's
// Caddy state (~/.local/share/caddy, port 2019, the system trust store).
//
//	port := harness.FreePort(t)
//	g := harness.StartGateway(t, fmt.Sprintf("localhost:%d {\n\ttls internal\n\trespond ok\n}\n", port))
//	g.WaitCertificate(t, "localhost")
//	resp, err := g.Client(t).Get(fmt.Sprintf("https://localhost:%d/", port))
//	...
//	g.Reload(t, newCaddyfile)
//	g.WaitLog(t, 5*time.Second, `"msg":"some event"`)
package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/ports"
)

// Time limits. A first build on a busy machine is slow; everything else is quick.
const (
	buildTimeout   = 10 * time.Minute
	startTimeout   = 30 * time.Second
	commandTimeout = 60 * time.Second
	stopTimeout    = 5 * time.Second
)

var (
	buildOnce sync.Once
	binPath   string
	errBuild  error
)

// Binary returns the path of a legacygate binary built from this module's
// ./cmd/legacygate. It is built once per test process (go build's cache makes
// later processes quick) into a directory under os.TempDir() shared by the
// test processes of this module root (other worktrees get their own), written
// to a temporary name and renamed into place, so concurrent test processes
// never see a half-written file.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() { binPath, errBuild = build() })
	if errBuild != nil {
		t.Fatalf("building legacygate: %v", errBuild)
	}
	return binPath
}

func build() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	// One directory per module root: worktrees of this repository test
	// different code at the same time, and must not run each other's binary.
	dir := filepath.Join(os.TempDir(), "legacygate-harness", fmt.Sprintf("%x", sha256.Sum256([]byte(root)))[:16])
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "legacygate-*.tmp")
	if err != nil {
		return "", fmt.Errorf("creating a temporary file in %s: %w", dir, err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())

	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp.Name(), "./cmd/legacygate")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/legacygate in %s: %w\n%s", root, err, out)
	}
	final := filepath.Join(dir, "legacygate")
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", fmt.Errorf("moving the binary into place: %w", err)
	}
	return final, nil
}

// moduleRoot is the directory holding go.mod, found with `go env GOMOD` so
// tests work from any package directory.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that no other test process was given (ports.Free: Caddy binds with
// SO_REUSEPORT, so two gateways given one port would share it silently).
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := ports.Free()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// Run runs the legacygate binary with args (for example "adapt", "--config",
// file) and returns its standard output and standard error. It is bounded in
// time; a non-zero exit is returned as an error, with the output still filled.
func Run(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin := Binary(t) // before the clock starts: a first build can be slow
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("legacygate %s: %w", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), err
}

// Gateway is a running `legacygate run` process.
type Gateway struct {
	// AdminAddr is the admin endpoint, "127.0.0.1:PORT".
	AdminAddr string
	// Dir is the gateway's private directory: the Caddyfile (Caddyfile),
	// Caddy's storage (storage/, with the internal CA under
	// storage/pki/authorities/local/) and HOME/XDG directories.
	Dir string
	// HTTPPort and HTTPSPort are the ports set as the http_port and
	// https_port global options: site addresses without a port listen there.
	HTTPPort, HTTPSPort int

	cmd  *exec.Cmd
	logs *lockedBuffer
	done chan struct{}
	err  error // the process's exit status, valid after done is closed
}

// StartGateway starts legacygate with caddyfile and waits (at most 30 s)
// until it serves the configuration; the test fails if it does not. The
// process is stopped when the test ends.
//
// The harness owns these global options and inserts them into the
// Caddyfile's global options block (a "{" alone on the first line that is
// not blank or a comment), creating the block if there is none, so
// the Caddyfile must not set them itself: admin (a free port), storage
// file_system (Dir/storage), http_port and https_port (free ports),
// persist_config off and skip_install_trust. Readiness is detected from
// Caddy's "serving initial configuration" log line on standard error, so the
// Caddyfile must leave the default logger writing to stderr.
func StartGateway(t testing.TB, caddyfile string) *Gateway {
	t.Helper()
	g, err := TryStartGateway(t, caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TryStartGateway is StartGateway for configurations expected to fail: it
// returns the error (which includes the process's log) instead of failing.
func TryStartGateway(t testing.TB, caddyfile string) (*Gateway, error) {
	t.Helper()
	bin := Binary(t)
	g := &Gateway{
		AdminAddr: "127.0.0.1:" + strconv.Itoa(FreePort(t)),
		Dir:       t.TempDir(),
		HTTPPort:  FreePort(t),
		HTTPSPort: FreePort(t),
		logs:      &lockedBuffer{},
	}
	file, err := g.writeCaddyfile(caddyfile)
	if err != nil {
		return nil, err
	}
	if err := g.start(bin, file); err != nil {
		return nil, err
	}
	t.Cleanup(g.stop)
	if err := g.waitReady(); err != nil {
		return nil, fmt.Errorf("%w\n--- gateway log ---\n%s", err, g.Logs())
	}
	return g, nil
}

// start runs `legacygate run` on the Caddyfile file.
func (g *Gateway) start(bin, file string) error {
	g.cmd = exec.Command(bin, "run", "--config", file, "--adapter", "caddyfile")
	g.cmd.Dir = g.Dir
	g.cmd.Env = g.env()
	g.cmd.Stdout = g.logs
	g.cmd.Stderr = g.logs
	if err := g.cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	done := make(chan struct{})
	g.done = done
	go func(cmd *exec.Cmd) {
		g.err = cmd.Wait()
		close(done)
	}(g.cmd)
	return nil
}

// Restart stops the process gracefully (Caddy unloads its configuration,
// as on a service restart) and starts it again with the same Dir (storage,
// instance id), admin address, ports and the Caddyfile last loaded, and
// waits until it serves it; the test fails otherwise. Logs then hold only
// the new process's output. Certificates are loaded from storage, so there
// is no "certificate obtained" line to wait for.
func (g *Gateway) Restart(t testing.TB) {
	t.Helper()
	bin := Binary(t)
	g.stop()
	g.logs = &lockedBuffer{}
	if err := g.start(bin, filepath.Join(g.Dir, "Caddyfile")); err != nil {
		t.Fatal(err)
	}
	if err := g.waitReady(); err != nil {
		t.Fatalf("restarting the gateway: %v\n--- gateway log ---\n%s", err, g.Logs())
	}
}

// Reload replaces the running configuration with caddyfile through
// `legacygate reload`; the test fails if the gateway rejects it.
func (g *Gateway) Reload(t testing.TB, caddyfile string) {
	t.Helper()
	if err := g.TryReload(t, caddyfile); err != nil {
		t.Fatal(err)
	}
}

// TryReload is Reload for configurations expected to fail: it returns the
// error, which includes the gateway's answer. The old configuration keeps
// running when a reload fails.
func (g *Gateway) TryReload(t testing.TB, caddyfile string) error {
	t.Helper()
	file, err := g.writeCaddyfile(caddyfile)
	if err != nil {
		return err
	}
	stdout, stderr, err := Run(t, "reload", "--address", g.AdminAddr, "--config", file, "--adapter", "caddyfile", "--force")
	if err != nil {
		return fmt.Errorf("%w\n%s%s", err, stdout, stderr)
	}
	return nil
}

// Logs returns everything the process wrote so far (Caddy's JSON log lines on
// standard error, one per line).
func (g *Gateway) Logs() string { return g.logs.String() }

// WaitLog waits up to timeout for a log line containing every one of parts,
// and returns it; the test fails if none appears.
func (g *Gateway) WaitLog(t testing.TB, timeout time.Duration, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, line := range strings.Split(g.Logs(), "\n") {
			if containsAll(line, parts) {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q within %v; log:\n%s", parts, timeout, g.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitCertificate waits (at most 10 s) until Caddy has obtained the
// certificate for name. Caddy serves its configuration before its managed
// certificates (including `tls internal` ones) are issued, so a TLS test
// calls this before its first handshake.
//
// certmagic logs "certificate obtained successfully" before it puts the
// certificate in its cache (certmagic v0.25.6 config.go:800 logs, the
// obtain job caches at config.go:512), and a handshake in between gets
// "no certificate available" (handshake.go:423), which crypto/tls answers
// with alert "tls: internal error"; under CPU load a test reading the
// line hits that gap (issue 13's fault-test flake). WaitCertificate
// therefore also waits until a handshake for name succeeds on every port
// the Caddyfile gives name (name:PORT), or on the https_port when it gives
// none.
func (g *Gateway) WaitCertificate(t testing.TB, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	g.WaitLog(t, 10*time.Second, `"certificate obtained successfully"`, `"identifier":"`+name+`"`)
	for _, port := range g.sitePorts(name) {
		if err := waitHandshake(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), name, deadline); err != nil {
			t.Fatalf("the certificate for %s is not served on port %d: %v\n--- gateway log ---\n%s", name, port, err, g.Logs())
		}
	}
}

// sitePorts is every port the loaded Caddyfile gives name (name:PORT), or
// the https_port when it gives none.
func (g *Gateway) sitePorts(name string) []int {
	var ports []int
	b, err := os.ReadFile(filepath.Join(g.Dir, "Caddyfile"))
	if err == nil {
		text := envPlaceholder.ReplaceAllStringFunc(string(b), expandEnv)
		// A site address, "name:PORT" or "https://name:PORT", but not a
		// plain "http://name:PORT" site, which has no certificate.
		re := regexp.MustCompile(`(?m)(^|[\s,]|https://)` + regexp.QuoteMeta(name) + `:(\d+)`)
		for _, m := range re.FindAllStringSubmatch(text, -1) {
			if p, err := strconv.Atoi(m[2]); err == nil && !slices.Contains(ports, p) {
				ports = append(ports, p)
			}
		}
	}
	if len(ports) == 0 {
		ports = append(ports, g.HTTPSPort)
	}
	return ports
}

// envPlaceholder is a Caddyfile environment placeholder, {$NAME} or
// {$NAME:default}, which the gateway (started with this process's
// environment) expands when it loads the file.
var envPlaceholder = regexp.MustCompile(`\{\$([A-Za-z0-9_]+)(?::([^}]*))?\}`)

func expandEnv(placeholder string) string {
	m := envPlaceholder.FindStringSubmatch(placeholder)
	if v, ok := os.LookupEnv(m[1]); ok && v != "" {
		return v
	}
	return m[2]
}

// waitHandshake retries a TLS handshake for name on addr until one
// succeeds, or returns the last error at the deadline. Only the presence
// of a certificate matters here, so the chain is not verified.
func waitHandshake(addr, name string, deadline time.Time) error {
	for {
		d := &tls.Dialer{
			NetDialer: &net.Dialer{Timeout: time.Second},
			Config:    &tls.Config{ServerName: name, InsecureSkipVerify: true},
		}
		conn, err := d.Dial("tcp", addr)
		if err == nil {
			return conn.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RootCAs is a pool holding the root of the gateway's internal CA (the one
// `tls internal` issues from), for clients that verify the gateway properly.
func (g *Gateway) RootCAs(t testing.TB) *x509.CertPool {
	t.Helper()
	file := filepath.Join(g.Dir, "storage", "pki", "authorities", "local", "root.crt")
	pemBytes, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("reading the internal CA root (is `tls internal` configured?): %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("no certificate in %s", file)
	}
	return pool
}

// Client is an HTTP client for this gateway: it trusts the internal CA
// (RootCAs), connects to 127.0.0.1 whatever host the URL names (so
// https://localhost:PORT/ sends SNI and Host "localhost" and never tries ::1),
// opens a new connection per request and times out after 10 s.
func (g *Gateway) Client(t testing.TB) *http.Client {
	t.Helper()
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: g.RootCAs(t)},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return dialer.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
		},
		DisableKeepAlives: true,
		// Honour Expect: 100-continue when a test sets it.
		ExpectContinueTimeout: 2 * time.Second,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (g *Gateway) writeCaddyfile(caddyfile string) (string, error) {
	file := filepath.Join(g.Dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(g.withGlobals(caddyfile)), 0o644); err != nil {
		return "", fmt.Errorf("writing %s: %w", file, err)
	}
	return file, nil
}

// withGlobals inserts the harness's global options at the top of the
// Caddyfile's global options block (the first token, after comments, is "{"
// alone on its line), or adds a block.
func (g *Gateway) withGlobals(caddyfile string) string {
	globals := fmt.Sprintf("\tadmin %s\n\tstorage file_system %s\n\thttp_port %d\n\thttps_port %d\n\tpersist_config off\n\tskip_install_trust\n",
		g.AdminAddr, filepath.Join(g.Dir, "storage"), g.HTTPPort, g.HTTPSPort)
	lines := strings.SplitAfter(caddyfile, "\n")
	for i, line := range lines {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if trimmed == "{" {
			return strings.Join(lines[:i+1], "") + globals + strings.Join(lines[i+1:], "")
		}
		break
	}
	return "{\n" + globals + "}\n\n" + caddyfile
}

// env keeps Caddy's fallback paths (autosave, default storage) inside Dir.
func (g *Gateway) env() []string {
	env := os.Environ()
	for _, kv := range []string{"HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"} {
		env = append(env, kv+"="+g.Dir)
	}
	return env
}

func (g *Gateway) waitReady() error {
	deadline := time.After(startTimeout)
	for {
		if strings.Contains(g.Logs(), "serving initial configuration") && g.adminAnswers() {
			return nil
		}
		select {
		case <-g.done:
			return fmt.Errorf("legacygate run exited before serving its configuration: %v", g.err)
		case <-deadline:
			return fmt.Errorf("legacygate run did not serve its configuration within %v", startTimeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (g *Gateway) adminAnswers() bool {
	client := &http.Client{Timeout: time.Second}
	resp, err := client.Get("http://" + g.AdminAddr + "/config/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// stop interrupts the process (Caddy shuts down gracefully) and kills it if
// it has not exited within 5 s.
func (g *Gateway) stop() {
	select {
	case <-g.done:
		return
	default:
	}
	_ = g.cmd.Process.Signal(os.Interrupt)
	select {
	case <-g.done:
	case <-time.After(stopTimeout):
		_ = g.cmd.Process.Kill()
		<-g.done
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// lockedBuffer collects a process's output while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
