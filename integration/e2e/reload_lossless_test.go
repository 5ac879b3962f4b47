package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
)

// losslessCaddyfile is a site that answers without a manager: what is
// measured is the listener hand-over, not the chain behind it. generation
// changes on every reload, so each reload really replaces the servers.
// legacygate_handover is configured as in Caddyfile.example.
func losslessCaddyfile(port, generation int) string {
	return fmt.Sprintf(`{
	grace_period 5s
	servers {
		listener_wrappers {
			legacygate_handover
			tls
		}
	}
}

localhost:%d {
	tls internal
	header X-Generation %d
	respond "ok"
}
`, port, generation)
}

// connLoad opens new TLS connections to addr at a steady rate, each one
// doing one request (Connection: close), and counts how each ended.
type connLoad struct {
	addr string
	rate int // new connections per second

	started, ok atomic.Int64
	slowest     atomic.Int64 // nanoseconds, of a connection that succeeded
	mu          sync.Mutex
	failures    map[string]int
	examples    []string
}

func (l *connLoad) run(ctx context.Context) {
	l.failures = map[string]int{}
	// A token per connection, paced by a ticker; at most rate*2 connections
	// in flight, so a stalled gateway shows up as failures, not as an
	// unbounded pile of goroutines.
	inFlight := make(chan struct{}, 2*l.rate)
	interval := time.Second / time.Duration(l.rate)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case inFlight <- struct{}{}:
		default:
			l.fail("client saturated: too many connections in flight", "")
			continue
		}
		l.started.Add(1)
		wg.Go(func() {
			defer func() { <-inFlight }()
			start := time.Now()
			if reason, detail := l.one(); reason != "" {
				l.fail(reason, detail)
				return
			}
			l.ok.Add(1)
			took := int64(time.Since(start))
			for old := l.slowest.Load(); took > old && !l.slowest.CompareAndSwap(old, took); old = l.slowest.Load() {
			}
		})
	}
}

// one opens a connection, does a request and reads the answer: "" when it
// succeeded, else the step that failed.
func (l *connLoad) one() (reason, detail string) {
	d := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: 5 * time.Second},
		// The chain is not what is measured; verifying it would spend the
		// client's CPU that the load needs.
		Config: &tls.Config{ServerName: "localhost", InsecureSkipVerify: true},
	}
	conn, err := d.Dial("tcp", l.addr)
	if err != nil {
		return "dial/handshake: " + errorKind(err), err.Error()
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"); err != nil {
		return "write: " + errorKind(err), err.Error()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "read: " + errorKind(err), err.Error()
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "body: " + errorKind(err), err.Error()
	}
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		return fmt.Sprintf("answer: status %d", resp.StatusCode), string(body)
	}
	return "", ""
}

func (l *connLoad) fail(reason, detail string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures[reason]++
	if len(l.examples) < 5 && detail != "" {
		l.examples = append(l.examples, detail)
	}
}

func (l *connLoad) report() (failed int64, text string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var kinds []string
	for k, n := range l.failures {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
		failed += int64(n)
	}
	sort.Strings(kinds)
	return failed, fmt.Sprintf("%d connections started, %d succeeded (slowest %s), %d failed %v; examples %q",
		l.started.Load(), l.ok.Load(), time.Duration(l.slowest.Load()).Round(time.Millisecond), failed, kinds, l.examples)
}

// errorKind names an error without its addresses, so failures group.
func errorKind(err error) string {
	switch {
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	}
	s := err.Error()
	for _, k := range []string{"connection reset by peer", "connection refused", "broken pipe", "i/o timeout"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	return s
}

// brokenCaddyfile adapts but fails to provision (a CEL expression that
// does not compile), after the listener wrappers were provisioned.
func brokenCaddyfile(port int) string {
	return strings.Replace(losslessCaddyfile(port, -1), "\trespond \"ok\"",
		"\t@m expression \"bad(((\"\n\trespond @m \"never\"\n\trespond \"ok\"", 1)
}

// reloadStep does reload number i of the gateway listening on port.
type reloadStep func(t *testing.T, g *harness.Gateway, port, i int)

func goodReload(t *testing.T, g *harness.Gateway, port, i int) {
	t.Helper()
	g.Reload(t, losslessCaddyfile(port, i))
}

// reloadsUnderNewConnections runs load against a fresh gateway, reloads it
// reloads times spaced by gap, and returns the load's account.
func reloadsUnderNewConnections(t *testing.T, rate, reloads int, gap time.Duration) (failed int64, text string) {
	t.Helper()
	failed, text, _ = reloadsUnder(t, rate, reloads, gap, goodReload)
	return failed, text
}

func reloadsUnder(t *testing.T, rate, reloads int, gap time.Duration, step reloadStep) (failed int64, text string, slowest time.Duration) {
	t.Helper()
	port := harness.FreePort(t)
	g := harness.StartGateway(t, losslessCaddyfile(port, 0))
	g.WaitCertificate(t, "localhost")
	l := &connLoad{addr: fmt.Sprintf("127.0.0.1:%d", port), rate: rate}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.run(ctx) }()
	time.Sleep(gap)
	for i := 1; i <= reloads; i++ {
		step(t, g, port, i)
		time.Sleep(gap)
	}
	cancel()
	<-done
	failed, text = l.report()
	t.Logf("%d reloads under %d new TLS connections/s: %s", reloads, rate, text)
	return failed, text, time.Duration(l.slowest.Load())
}

// TestReloadResetsNoNewConnection is issue 13's "no new connection is
// reset across a reload", short enough for CI: with legacygate_handover
// before tls, the first socket stays open across reloads and only the
// newest configuration's server takes connections (docs/modules/
// legacygate_handover.md). Without the wrapper it loses a few connections
// per run (docs/operations/systemd.md).
func TestReloadResetsNoNewConnection(t *testing.T) {
	failed, text := reloadsUnderNewConnections(t, 200, 3, 700*time.Millisecond)
	if failed != 0 {
		t.Errorf("new connections failed across reloads: %s", text)
	}
}

// TestAFailedReloadKeepsTheRunningServerAccepting: the older server stops
// accepting while a newer configuration provisions; when that load fails,
// it must take connections again at once, not after the 5 s a newer
// configuration has to claim an address.
func TestAFailedReloadKeepsTheRunningServerAccepting(t *testing.T) {
	step := func(t *testing.T, g *harness.Gateway, port, i int) {
		t.Helper()
		if i%2 == 0 {
			goodReload(t, g, port, i)
			return
		}
		if err := g.TryReload(t, brokenCaddyfile(port)); err == nil {
			t.Fatal("a configuration whose expression does not compile was loaded")
		}
	}
	failed, text, slowest := reloadsUnder(t, 200, 3, 700*time.Millisecond, step)
	if failed != 0 {
		t.Errorf("new connections failed across failed reloads: %s", text)
	}
	// A good reload can hold a connection 1 to 2 s (the wrapper's settle
	// of 1 s, then the queue); without the revert, connections arriving
	// during the failed load wait most of the 5 s claim.
	if slowest > 4*time.Second {
		t.Errorf("a connection took %s: the running server did not resume accepting when the reload failed (%s)", slowest, text)
	}
}

// TestReloadResetsNoNewConnectionAtFullRate is the full measurement: 1,000
// new TLS connections per second asked across 10 reloads. It takes about
// 20 s and most of the machine.
func TestReloadResetsNoNewConnectionAtFullRate(t *testing.T) {
	if os.Getenv("LEGACYGATE_LONG") != "1" {
		t.Skip("set LEGACYGATE_LONG=1 to run the full measurement (1,000 new connections/s, 10 reloads)")
	}
	failed, text := reloadsUnderNewConnections(t, 1000, 10, time.Second)
	if failed != 0 {
		t.Errorf("new connections failed across reloads: %s", text)
	}
}
