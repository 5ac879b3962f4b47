// Package redislab starts a real redis-server (Debian's package) on a
// loopback port picked at run time, for the tests of the Redis storage and
// of the cluster: no fixed 6379, one server per test, stopped at cleanup.
package redislab

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/ports"
)

// Server is one redis-server process.
type Server struct {
	// Addr is host:port on 127.0.0.1.
	Addr string
	// Port is Addr's port.
	Port int

	dir        string
	persistent bool
	cmd        *exec.Cmd
}

// Options tune a server.
type Options struct {
	// Persistent keeps data across Restart (append-only file, fsync every
	// write). Without it a restart comes back empty, as a Redis that lost
	// its memory does: what the gateways held must be written again.
	Persistent bool
}

// Binary finds redis-server. A test that needs it skips when it is absent,
// except under CI=true, where it fails (.ci/run installs it).
func Binary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"redis-server", "/usr/bin/redis-server", "/usr/sbin/redis-server"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("redis-server is not installed (apt-get install -y redis-server)")
	}
	t.Skip("redis-server is not installed")
	return ""
}

// Start starts a redis-server on a free loopback port and stops it when
// the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	port, err := ports.Free()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Addr:       net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Port:       port,
		dir:        t.TempDir(),
		persistent: opts.Persistent,
	}
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	args := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.Port),
		"--dir", s.dir,
		"--save", "",
		"--protected-mode", "yes",
		"--daemonize", "no",
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}
	if s.persistent {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	s.cmd = exec.Command(Binary(t), args...)
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	if err := s.waitReady(10 * time.Second); err != nil {
		s.Stop()
		log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
		t.Fatalf("redis-server on %s: %v\n%s", s.Addr, err, log)
	}
}

// waitReady pings until the server answers PONG.
func (s *Server) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := ping(s.Addr)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PONG within %s: %w", limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping speaks just enough RESP to ask PING.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// Stop kills the server (SIGKILL: a crash, not a clean shutdown) and waits
// for it. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Restart kills the server and starts it again on the same port and
// directory: empty unless the server was started Persistent.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}
