package bench

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
	"github.com/legacygate/legacygate/integration/ports"
)

const (
	startTimeout = 60 * time.Second
	stopTimeout  = 5 * time.Second
	// managerName is the emulated manager's certificate name, sent as SNI.
	managerName = "sepm.legacygate.test"
	helloPath   = "/secars/secars.dll?hello,secars"
)

// FindLegacygate returns the legacygate binary to benchmark: the one in PATH,
// else one built from this module's ./cmd/legacygate into dir/bin (when run
// from inside the module's source tree; dir/legacygate is the gateway
// target's own directory).
func FindLegacygate(dir string) (string, error) {
	if p, err := exec.LookPath("legacygate"); err == nil {
		return p, nil
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", errors.New("no legacygate in PATH and not inside the legacygate source tree to build one: pass --legacygate")
	}
	bin := filepath.Join(dir, "bin", "legacygate")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/legacygate")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/legacygate: %w\n%s", err, out)
	}
	return bin, nil
}

// ResolveBinary turns a binary named on the command line into an absolute
// path: the gateways run in directories of their own, where a relative
// "./legacygate" names nothing. A bare name is looked up in PATH.
func ResolveBinary(name string) (string, error) {
	path := name
	if !strings.ContainsRune(name, filepath.Separator) {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("binary %q: %w", name, err)
		}
		path = p
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("binary %q: %w", name, err)
	}
	info, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("binary %q: %w", name, err)
	}
	if info.IsDir() || info.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("binary %q: %s is not an executable file", name, abs)
	}
	return abs, nil
}

// FindNginx returns nginx from PATH (or /usr/sbin). When it is missing and
// this process runs as root, it installs the OS package first.
func FindNginx(log io.Writer) (string, error) { return findOrInstall(log, "nginx", "--no-nginx") }

// FindHAProxy returns haproxy from PATH (or /usr/sbin). When it is missing
// and this process runs as root, it installs the OS package first.
func FindHAProxy(log io.Writer) (string, error) {
	return findOrInstall(log, "haproxy", "--no-haproxy")
}

// findOrInstall looks the command name up and, as root, installs the OS
// package of the same name when it is missing. optOut is the flag that
// leaves the tool out.
func findOrInstall(log io.Writer, name, optOut string) (string, error) {
	if p, err := lookPath(name); err == nil {
		return p, nil
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("%s is not installed and this is not root: install it (apt-get install -y %s) or pass %s", name, name, optOut)
	}
	fmt.Fprintf(log, "bench: installing %s (apt-get install -y %s)\n", name, name)
	if err := aptInstall(name); err != nil {
		return "", err
	}
	return lookPath(name)
}

// aptInstall installs an OS package without starting its service (nginx
// would listen on :80), refreshing the package lists once if the first try
// fails.
func aptInstall(pkg string) error {
	allow, err := denyServiceStarts()
	if err != nil {
		return err
	}
	defer allow()
	out, err := aptGet("install", "-y", pkg)
	if err != nil {
		if _, uerr := aptGet("update"); uerr == nil {
			out, err = aptGet("install", "-y", pkg)
		}
	}
	if err != nil {
		return fmt.Errorf("apt-get install -y %s: %w\n%s", pkg, err, out)
	}
	return nil
}

func aptGet(args ...string) ([]byte, error) {
	cmd := exec.Command("apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	return cmd.CombinedOutput()
}

// policyRC is the Debian hook invoke-rc.d asks before starting a service.
const policyRC = "/usr/sbin/policy-rc.d"

// denyServiceStarts puts a policy-rc.d that refuses every service start in
// place, as .ci/run does, unless the system already has one; the returned
// function removes the one it wrote.
func denyServiceStarts() (func(), error) {
	f, err := os.OpenFile(policyRC, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if errors.Is(err, fs.ErrExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("writing %s to keep the package's service stopped: %w", policyRC, err)
	}
	_, err = f.WriteString("#!/bin/sh\nexit 101\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(policyRC)
		return nil, fmt.Errorf("writing %s to keep the package's service stopped: %w", policyRC, err)
	}
	return func() { os.Remove(policyRC) }, nil
}

// lookPath is exec.LookPath that also looks in the sbin directories, which a
// non-root PATH often lacks.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH or sbin", name)
}

// process is a server under test: a child process and its log.
type process struct {
	name string
	cmd  *exec.Cmd
	logs *lockedBuffer
	done chan struct{}
	err  error
}

// startProcess runs bin with args in dir; with cpus (taskset's list, e.g.
// "0" or "0,2") the process and everything it starts run on those CPUs only.
func startProcess(name, dir, cpus, bin string, args ...string) (*process, error) {
	p := &process{name: name, logs: &lockedBuffer{}, done: make(chan struct{})}
	if cpus != "" {
		bin, args = "taskset", append([]string{"--cpu-list", cpus, bin}, args...)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) tree() procTree { return procTree{pid: p.cmd.Process.Pid} }

// waitReady polls base's reachability probe over TLS until it answers 200.
func (p *process) waitReady(base string) error {
	client := insecureClient(1, false)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	for {
		resp, err := client.Get(base + helloPath)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before serving: %v\n%s", p.name, p.err, p.logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer %s within %v (last error %v)\n%s", p.name, base+helloPath, startTimeout, err, p.logs.String())
		}
	}
}

// stop interrupts the process and kills it if it has not exited within 5 s.
func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// freePort is ports.Free: Caddy binds with SO_REUSEPORT, so a port another
// process was also given would be shared silently.
func freePort() (int, error) { return ports.Free() }

// front is the TLS certificate every proxy under test serves to clients.
type front struct {
	certFile, keyFile string
}

func newFront(dir string) (front, error) {
	pair, err := certs.New(certs.Modern, "gateway.legacygate.test", 2048)
	if err != nil {
		return front{}, err
	}
	c, k, err := pair.WriteFiles(dir, "front")
	return front{certFile: c, keyFile: k}, err
}

// caddyGlobals are the global options of every Caddy under test: its own
// storage and ports, no admin endpoint, nothing installed in the system.
func caddyGlobals(dir string, extra string) (string, error) {
	httpPort, err := freePort()
	if err != nil {
		return "", err
	}
	httpsPort, err := freePort()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("{\n\tadmin off\n\tstorage file_system %s\n\thttp_port %d\n\thttps_port %d\n\tpersist_config off\n\tskip_install_trust\n\tgrace_period 1s\n%s}\n\n",
		filepath.Join(dir, "storage"), httpPort, httpsPort, extra), nil
}

// startCaddy runs `legacygate run` with caddyfile in its own directory (on
// cpus, see startProcess) and waits until base answers.
func startCaddy(name, bin, dir, cpus, caddyfile, base string) (*process, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(caddyfile), 0o644); err != nil {
		return nil, err
	}
	p, err := startProcess(name, dir, cpus, bin, "run", "--config", file, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	if err := p.waitReady(base); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// nginxConfig proxies to the manager over TLS, verifying its certificate,
// with a keep-alive pool to it, as the stock Caddy does.
const nginxConfig = `worker_processes auto;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[1]s/client_body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	upstream manager {
		server %[2]s;
		keepalive 64;
		keepalive_requests 1000000;
	}
	server {
		listen 127.0.0.1:%[3]d ssl;
		ssl_certificate %[4]s;
		ssl_certificate_key %[5]s;
		ssl_protocols TLSv1.2 TLSv1.3;
		keepalive_requests 1000000;
		location / {
			proxy_pass https://manager;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_ssl_server_name on;
			proxy_ssl_name %[6]s;
			proxy_ssl_verify on;
			proxy_ssl_trusted_certificate %[7]s;
			proxy_ssl_session_reuse on;
			proxy_buffers 64 8k;
			proxy_busy_buffers_size 16k;
		}
	}
}
`

// startNginx runs nginx in the foreground with a config in dir.
func startNginx(bin, dir, cpus, upstream string, port int, f front, managerCert string) (*process, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "nginx.conf")
	text := fmt.Sprintf(nginxConfig, dir, upstream, port, f.certFile, f.keyFile, managerName, managerCert)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	p, err := startProcess("nginx", dir, cpus, bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	if err != nil {
		return nil, err
	}
	if err := p.waitReady(fmt.Sprintf("https://127.0.0.1:%d", port)); err != nil {
		p.stop()
		data, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return nil, fmt.Errorf("%w\nerror.log:\n%s", err, data)
	}
	return p, nil
}

// haproxyConfig is nginxConfig's equivalent: HTTP/1.1 and TLS 1.2+ to
// clients with the same certificate, TLS to the manager verifying its
// certificate and name, idle upstream connections reused by any client
// (http-reuse always), a thread per CPU, nothing logged.
const haproxyConfig = `global
	nbthread %[1]d
	maxconn 8192
	pidfile %[2]s/haproxy.pid

defaults
	mode http
	option http-keep-alive
	timeout connect 5s
	timeout client 75s
	timeout server 60s
	timeout http-request 10s
	timeout http-keep-alive 75s

frontend gateway
	bind 127.0.0.1:%[3]d ssl crt %[4]s alpn http/1.1 ssl-min-ver TLSv1.2
	default_backend manager

backend manager
	http-reuse always
	server manager %[5]s ssl verify required ca-file %[6]s sni str(%[7]s) verifyhost %[7]s
`

// startHAProxy runs HAProxy with haproxyConfig and waits until it answers.
func startHAProxy(bin, dir, cpus, upstream string, port int, f front, managerCert string) (*process, error) {
	p, err := launchHAProxy(bin, dir, cpus, upstream, port, f, managerCert, managerName)
	if err != nil {
		return nil, err
	}
	if err := p.waitReady(fmt.Sprintf("https://127.0.0.1:%d", port)); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// launchHAProxy runs HAProxy as a foreground master with one worker (-W -db),
// its config, combined certificate and pidfile in dir, expecting serverName
// in the manager's certificate.
func launchHAProxy(bin, dir, cpus, upstream string, port int, f front, managerCert, serverName string) (*process, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	pem, err := combinedPEM(dir, f)
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "haproxy.cfg")
	text := fmt.Sprintf(haproxyConfig, cpuCount(cpus), dir, port, pem, upstream, managerCert, serverName)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	return startProcess("haproxy", dir, cpus, bin, "-W", "-db", "-f", conf)
}

// combinedPEM writes the front's certificate and key into one file, the form
// HAProxy's crt wants.
func combinedPEM(dir string, f front) (string, error) {
	cert, err := os.ReadFile(f.certFile)
	if err != nil {
		return "", err
	}
	key, err := os.ReadFile(f.keyFile)
	if err != nil {
		return "", err
	}
	return writeFile(dir, "front.pem", append(append(cert, '\n'), key...))
}

// startManager runs an emulated SEPM-style manager on loopback.
func startManager(tlsMin, tlsMax uint16, kind certs.Kind, sign string, profileSize int) (*manager.Manager, error) {
	m, err := manager.New(manager.Config{
		HTTPSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		TLSMin: tlsMin, TLSMax: tlsMax, Cert: kind, Sign: sign,
		CommonName: managerName, ProfileSize: profileSize, ServerAddress: "127.0.0.1",
	})
	if err != nil {
		return nil, err
	}
	if err := m.Start(); err != nil {
		return nil, err
	}
	return m, nil
}

// plainClient talks to the emulated manager's plain listener.
var plainClient = &http.Client{Timeout: 10 * time.Second}

// register registers one client with the manager over its plain listener
// and returns its host id.
func register(m *manager.Manager, hostname string) (string, error) {
	return registerWith(plainClient, m, hostname)
}

// sylinkSerial reads the settings serial the manager's index announces.
func sylinkSerial(m *manager.Manager, hostID string) (string, error) {
	resp, err := plainClient.Get("http://" + m.Addrs().HTTP + "/secars/secars.dll?action=index&hostid=" + hostID)
	if err != nil {
		return "", fmt.Errorf("reading the index: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	match := regexp.MustCompile(`<SyLink Serial="([^"]+)"`).FindSubmatch(body)
	if match == nil {
		return "", fmt.Errorf("index without a SyLink serial: %q", body)
	}
	return string(match[1]), nil
}

// insecureClient is the load generator's HTTPS client. It does not verify
// the proxies' certificate (every proxy serves the same one; wrk does not
// verify either) and speaks HTTP/1.1, as legacy agents do.
func insecureClient(conns int, newConnEach bool) *http.Client {
	tr := &http.Transport{
		// No ClientSessionCache: a new connection is always a full handshake.
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableKeepAlives:   newConnEach,
		DisableCompression:  true,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// writeFile writes data to dir/name and returns the path.
func writeFile(dir, name string, data []byte) (string, error) {
	p := filepath.Join(dir, name)
	return p, os.WriteFile(p, data, 0o600)
}

// lockedBuffer collects a child's output, bounded so a chatty process
// cannot fill memory during a long soak.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const maxLogBytes = 1 << 20

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > maxLogBytes {
		keep := append([]byte(nil), b.buf.Bytes()[b.buf.Len()-maxLogBytes/2:]...)
		b.buf.Reset()
		b.buf.Write(keep)
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// cpuCount is how many CPUs a target started on cpus (startProcess) may
// use: those listed, else all of this process's.
func cpuCount(cpus string) int {
	if cpus == "" {
		return runtime.NumCPU()
	}
	return strings.Count(cpus, ",") + 1
}
