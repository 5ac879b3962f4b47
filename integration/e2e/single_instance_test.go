package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
)

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// secondRun starts `legacygate run` on the first gateway's Caddyfile (same
// admin address, same listeners) with its own storage and home, plus args
// and env, and returns its output once it exits, or once it serves its
// configuration (then it is stopped and served is true).
func secondRun(t *testing.T, g *harness.Gateway, env []string, args ...string) (output string, served bool, err error) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.Binary(t), append([]string{"run", "--config", filepath.Join(g.Dir, "Caddyfile"), "--adapter", "caddyfile"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	cmd.Env = append(cmd.Env, env...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case err := <-done:
			return out.String(), false, err
		case <-time.After(50 * time.Millisecond):
		}
		if strings.Contains(out.String(), "serving initial configuration") {
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				err = <-done
			}
			return out.String(), true, err
		}
	}
}

func TestSecondRunOfTheSameConfigurationRefusesAndNamesTheRunningInstance(t *testing.T) {
	port := harness.FreePort(t)
	g := harness.StartGateway(t, fmt.Sprintf("localhost:%d {\n\ttls internal\n\trespond \"first\"\n}\n", port))
	g.WaitCertificate(t, "localhost")

	out, served, err := secondRun(t, g, nil)
	if served || err == nil {
		t.Fatalf("the second run started beside the first (served=%v, err=%v):\n%s", served, err, out)
	}
	for _, want := range []string{
		"another legacygate is already running",
		":" + strconv.Itoa(port),          // the listener in use
		g.AdminAddr,                       // the admin address in use
		"legacygate pid ",                 // who holds them
		filepath.Join(g.Dir, "Caddyfile"), // its configuration
		"--allow-second-instance",         // how to override
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal does not name %q:\n%s", want, out)
		}
	}

	// The pid named is the first gateway's process: its command line runs
	// the first gateway's Caddyfile.
	m := regexp.MustCompile(`legacygate pid (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no pid in the refusal:\n%s", out)
	}
	cmdline, err := os.ReadFile("/proc/" + m[1] + "/cmdline")
	if err != nil || !strings.Contains(string(cmdline), filepath.Join(g.Dir, "Caddyfile")) {
		t.Errorf("pid %s is not the first gateway (command line %q, %v)", m[1], cmdline, err)
	}

	// The first instance is untouched.
	if r := guardGet(t, g.Client(t), "GET", fmt.Sprintf("https://localhost:%d/", port)); r.status != 200 || string(r.body) != "first" {
		t.Errorf("first instance after the refused start: %d %q", r.status, r.body)
	}
}

func TestSecondRunStartsWhenExplicitlyAllowed(t *testing.T) {
	port := harness.FreePort(t)
	g := harness.StartGateway(t, fmt.Sprintf("localhost:%d {\n\ttls internal\n\trespond \"first\"\n}\n", port))
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"flag", nil, []string{"--allow-second-instance"}},
		{"environment", []string{"LEGACYGATE_ALLOW_SECOND_INSTANCE=1"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, served, _ := secondRun(t, g, tc.env, tc.args...)
			if !served {
				t.Fatalf("the explicitly allowed second run did not start:\n%s", out)
			}
		})
	}
}
