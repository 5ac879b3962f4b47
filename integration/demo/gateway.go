package demo

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const (
	gatewayStartTimeout = 60 * time.Second
	gatewayStopTimeout  = 5 * time.Second
	reloadTimeout       = 60 * time.Second
)

// gateway is the demo's `legacygate run` process. The first load starts it;
// later loads go through `legacygate reload`, as an administrator's do.
type gateway struct {
	bin       string   // the legacygate binary
	dir       string   // the demo folder: HOME and XDG directories of the process
	configDir string   // where the shipped configurations are
	admin     string   // the admin endpoint, 127.0.0.1:PORT, set in every configuration
	httpPort  int      // Caddy's http_port: the files' http:// sites
	httpsPort int      // Caddy's https_port: the files' https:// sites and the demo's site
	env       []string // the environment the last configuration was adapted in

	cmd  *exec.Cmd
	out  lockedBuffer // what the process wrote before its log moved to a file
	done chan struct{}
	err  error // the process's exit status, valid after done is closed
}

// newGateway picks the gateway's ports; nothing runs until the first load.
func newGateway(bin, dir, configDir string) (*gateway, error) {
	var ports [3]int
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	return &gateway{bin: bin, dir: dir, configDir: configDir,
		admin: fmt.Sprintf("127.0.0.1:%d", ports[0]), httpPort: ports[1], httpsPort: ports[2]}, nil
}

// makeDir makes the demo folder dir, or a temporary one (remove reports
// that) when dir is empty.
func makeDir(dir string) (path string, remove bool, err error) {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "legacygate-demo-")
		if err != nil {
			return "", false, fmt.Errorf("making the demo folder: %w", err)
		}
		return tmp, true, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, fmt.Errorf("making the demo folder %s: %w", dir, err)
	}
	return dir, false, nil
}

// load writes the shipped configuration name, with the demo's global
// options, into file and has the gateway serve it with vars set in its
// environment: it starts the process the first time and reloads it
// afterwards.
func (g *gateway) load(name string, vars map[string]string, file string) error {
	shipped, err := readShipped(g.configDir, name)
	if err != nil {
		return err
	}
	caddyfile, err := demoConfig(shipped, g.admin, g.dir, g.httpPort, g.httpsPort)
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(g.configDir, name), err)
	}
	if err := os.WriteFile(file, []byte(caddyfile), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", file, err)
	}
	g.env = configEnv(caddyfile, vars)
	if g.cmd == nil {
		return g.start(file)
	}
	return g.reload(file)
}

func (g *gateway) start(file string) error {
	g.cmd = exec.Command(g.bin, "run", "--config", file, "--adapter", "caddyfile")
	g.cmd.Dir = g.dir
	// The file's variables, and Caddy's fallback paths (instance id,
	// autosave) in the demo folder.
	g.cmd.Env = append(g.env, "HOME="+g.dir, "XDG_DATA_HOME="+g.dir, "XDG_CONFIG_HOME="+g.dir)
	g.cmd.Stdout, g.cmd.Stderr = &g.out, &g.out
	if err := g.cmd.Start(); err != nil {
		g.cmd = nil
		return fmt.Errorf("starting %s: %w", g.bin, err)
	}
	g.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		g.err = cmd.Wait()
		close(done)
	}(g.cmd, g.done)
	if err := g.waitReady(); err != nil {
		return fmt.Errorf("%s run --config %s: %w\n%s", g.bin, file, err, g.out.String())
	}
	return nil
}

// waitReady waits until the admin endpoint shows a configuration: Caddy
// answers GET /config/ only once a load has finished, so by then the
// gateway's listeners are up.
func (g *gateway) waitReady() error {
	deadline := time.After(gatewayStartTimeout)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-g.done:
			return fmt.Errorf("exited before serving its configuration: %v", g.err)
		case <-deadline:
			return fmt.Errorf("did not serve its configuration within %v", gatewayStartTimeout)
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := client.Get("http://" + g.admin + "/config/")
		if err != nil {
			continue
		}
		var body bytes.Buffer
		_, _ = body.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && strings.TrimSpace(body.String()) != "null" {
			return nil
		}
	}
}

// reload replaces the running configuration with file, as
// `legacygate reload` does for an administrator.
func (g *gateway) reload(file string) error {
	ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.bin, "reload", "--config", file, "--adapter", "caddyfile",
		"--address", g.admin, "--force")
	// The reload adapts the file, so it reads the file's variables.
	cmd.Env = g.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("legacygate reload --config %s: %w\n%s", file, err, out)
	}
	return nil
}

// stop interrupts the process (Caddy shuts down gracefully) and kills it if
// it has not exited within gatewayStopTimeout.
func (g *gateway) stop() error {
	if g == nil || g.cmd == nil {
		return nil
	}
	select {
	case <-g.done:
		return nil
	default:
	}
	if err := g.cmd.Process.Signal(os.Interrupt); err != nil {
		return fmt.Errorf("interrupting the gateway: %w", err)
	}
	select {
	case <-g.done:
		return nil
	case <-time.After(gatewayStopTimeout):
		_ = g.cmd.Process.Kill()
		<-g.done
		return fmt.Errorf("the gateway did not stop within %v; killed", gatewayStopTimeout)
	}
}

// lockedBuffer collects a process's output while the demo reads it.
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
