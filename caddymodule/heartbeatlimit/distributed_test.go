package heartbeatlimit

import (
	"encoding/binary"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// distributedPair provisions two heartbeat_limit instances sharing one file
// storage folder, as two gateways would.
func distributedPair(t *testing.T, dir string) (*HeartbeatLimit, *HeartbeatLimit) {
	t.Helper()
	// Two gateways are two processes. In one test process, identical blocks
	// would be one limiter (state is kept per lineage across reloads), so
	// the second instance's distributed block differs (purge_age), which
	// makes it a limiter of its own with its own instance name.
	block := func(purgeAge string) string {
		return fmt.Sprintf("heartbeat_limit {\n key {http.request.uri.query.hostid}\n rate 1/60s\n burst 2\n max_clients 1000\n distributed {\n interval 50ms\n purge_age %s\n storage file_system %s\n }\n}", purgeAge, dir)
	}
	return provisionHeartbeat(t, block("1s")), provisionHeartbeat(t, block("2s"))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHeartbeatDistributedTwoInstancesLimitOneClientTogether(t *testing.T) {
	a, b := distributedPair(t, t.TempDir())
	if a.hasher != b.hasher {
		t.Fatal("the instances hash keys with different seeds")
	}
	next := &countingNext{}
	for i := range 2 {
		if w := serveHeartbeat(t, a, heartbeatRequest("GET", "/?hostid=H1", "203.0.113.5", ""), next); w.Code != http.StatusOK {
			t.Fatalf("request %d at A: %d", i, w.Code)
		}
	}
	key, _, _ := a.clientKey(heartbeatRequest("GET", "/?hostid=H1", "203.0.113.5", ""))
	// A's debt is two tokens at 1/60s, 120 s when spent, and it shrinks as
	// time passes; more than 110 s is both tokens, seen within 10 s of the
	// spending however slow the exchange is on a loaded machine.
	waitFor(t, "B to learn A's debt", func() bool { return b.Distributed.shared(key) > 110*time.Second })
	w := serveHeartbeat(t, b, heartbeatRequest("GET", "/?hostid=H1", "203.0.113.5", ""), next)
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("third request, at B: %d, want 429 (burst 2 spent at A)", w.Code)
	}
	if w := serveHeartbeat(t, b, heartbeatRequest("GET", "/?hostid=H2", "203.0.113.5", ""), next); w.Code != http.StatusOK {
		t.Fatalf("another client at B: %d, want 200", w.Code)
	}
}

func TestHeartbeatDistributedPurgesStateOfDeadInstances(t *testing.T) {
	dir := t.TempDir()
	instances := filepath.Join(dir, "legacygate", "heartbeat_limit", "default", "instances")
	if err := os.MkdirAll(instances, 0o755); err != nil {
		t.Fatal(err)
	}
	stale := encodeState(time.Now().Add(-time.Hour).UnixNano(), func(add func(uint64, int64)) {
		add(1, time.Now().Add(time.Hour).UnixNano())
	})
	dead := filepath.Join(instances, "dead")
	if err := os.WriteFile(dead, stale, 0o644); err != nil {
		t.Fatal(err)
	}
	a, _ := distributedPair(t, dir)
	waitFor(t, "the dead instance's state to be purged", func() bool {
		_, err := os.Stat(dead)
		return os.IsNotExist(err)
	})
	if debt := a.Distributed.shared(1); debt != 0 {
		t.Fatalf("the dead instance's debt %v was counted", debt)
	}
}

func TestHeartbeatDistributedIgnoresCorruptState(t *testing.T) {
	good := encodeState(42, func(add func(uint64, int64)) { add(7, 99) })
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"wrong magic", append([]byte("notmagic"), good[8:]...)},
		{"truncated entry", good[:len(good)-3]},
		{"header only, short", good[:10]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			if _, err := decodeState(tt.b, func(uint64, int64) { called = true }); err == nil || called {
				t.Fatalf("decode accepted %q (entries seen: %v)", tt.name, called)
			}
		})
	}
	var got [2]int64
	written, err := decodeState(good, func(h uint64, full int64) { got = [2]int64{int64(h), full} })
	if err != nil || written != 42 || got != [2]int64{7, 99} {
		t.Fatalf("round trip: written %d, entry %v, err %v", written, got, err)
	}
}

func TestHeartbeatDistributedSeedFileOfWrongSizeIsAnError(t *testing.T) {
	dir := t.TempDir()
	seed := filepath.Join(dir, "legacygate", "heartbeat_limit", "default", "seed")
	if err := os.MkdirAll(filepath.Dir(seed), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(seed, binary.LittleEndian.AppendUint64(nil, 1), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := tryProvisionHeartbeat(t, "heartbeat_limit {\n rate 1/1s\n distributed {\n storage file_system "+dir+"\n }\n}")
	if err == nil {
		t.Fatal("a truncated seed file was accepted")
	}
}
