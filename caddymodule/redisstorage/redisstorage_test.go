package redisstorage

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/legacygate/legacygate/integration/redislab"
)

// provision provisions s against addr and cleans it up with the test.
func provision(t *testing.T, s *Storage, addr string) *Storage {
	t.Helper()
	if len(s.Address) == 0 && len(s.Host) == 0 && len(s.Port) == 0 {
		s.Address = []string{addr}
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := s.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Cleanup(func() { _ = s.Cleanup() })
	return s
}

func newStorage(t *testing.T, r *redislab.Server) *Storage {
	t.Helper()
	return provision(t, &Storage{Prefix: "t"}, r.Addr)
}

func TestStoreLoadStatDeleteOneFile(t *testing.T) {
	r := redislab.Start(t, redislab.Options{})
	s := newStorage(t, r)
	ctx := t.Context()
	before := time.Now().Add(-time.Second)
	if err := s.Store(ctx, "certificates/acme/a.example/a.example.crt", []byte("cert")); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(ctx, "certificates/acme/a.example/a.example.crt")
	if err != nil || string(got) != "cert" {
		t.Fatalf("Load = %q, %v", got, err)
	}
	info, err := s.Stat(ctx, "certificates/acme/a.example/a.example.crt")
	if err != nil || !info.IsTerminal || info.Size != 4 || info.Modified.Before(before) || info.Modified.After(time.Now().Add(time.Second)) {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	if err := s.Store(ctx, "certificates/acme/a.example/a.example.crt", []byte("renewed")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load(ctx, "certificates/acme/a.example/a.example.crt"); string(got) != "renewed" {
		t.Fatalf("after overwrite Load = %q", got)
	}
	dir, err := s.Stat(ctx, "certificates/acme")
	if err != nil || dir.IsTerminal {
		t.Fatalf("Stat(directory) = %+v, %v", dir, err)
	}
	if !s.Exists(ctx, "certificates/acme") || !s.Exists(ctx, "certificates/acme/a.example/a.example.crt") {
		t.Fatal("Exists is false for a stored file or its directory")
	}
	if err := s.Delete(ctx, "certificates/acme/a.example/a.example.crt"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "certificates/acme/a.example/a.example.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load after Delete: %v, want fs.ErrNotExist", err)
	}
	if _, err := s.Stat(ctx, "certificates/acme/a.example/a.example.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat after Delete: %v, want fs.ErrNotExist", err)
	}
	for _, k := range []string{"certificates", "certificates/acme", "certificates/acme/a.example"} {
		if s.Exists(ctx, k) {
			t.Errorf("empty directory %s still exists after its last file was deleted", k)
		}
	}
	if err := s.Delete(ctx, "never/stored"); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
	if _, err := s.List(ctx, "", false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("List of an empty storage: %v, want fs.ErrNotExist", err)
	}
	if n := s.client.DBSize(ctx).Val(); n != 0 {
		t.Fatalf("%d Redis keys left after every file was deleted", n)
	}
}

func TestListWalksADirectoryTree(t *testing.T) {
	r := redislab.Start(t, redislab.Options{})
	s := newStorage(t, r)
	ctx := t.Context()
	for _, k := range []string{"a/b/c/1", "a/b/c/2", "a/b/3", "a/4", "a/d/5", "top"} {
		if err := s.Store(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		dir       string
		recursive bool
		want      []string
	}{
		{"", false, []string{"a", "top"}},
		{"a", false, []string{"a/4", "a/b", "a/d"}},
		{"/a/", false, []string{"a/4", "a/b", "a/d"}},
		{"a/b", false, []string{"a/b/3", "a/b/c"}},
		{"a", true, []string{"a/4", "a/b", "a/b/3", "a/b/c", "a/b/c/1", "a/b/c/2", "a/d", "a/d/5"}},
		{"", true, []string{"a", "a/4", "a/b", "a/b/3", "a/b/c", "a/b/c/1", "a/b/c/2", "a/d", "a/d/5", "top"}},
		{"a/4", false, nil},
	}
	for _, tt := range tests {
		got, err := s.List(ctx, tt.dir, tt.recursive)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("List(%q, %t) = %q, %v; want %q", tt.dir, tt.recursive, got, err, tt.want)
		}
	}
	if _, err := s.List(ctx, "a/nothing", false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List of a missing directory: %v, want fs.ErrNotExist", err)
	}
	// Deleting a directory deletes everything under it and nothing else.
	if err := s.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	got, err := s.List(ctx, "", true)
	if want := []string{"a", "a/4", "a/d", "a/d/5", "top"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("after deleting a/b: List = %q, %v; want %q", got, err, want)
	}
	if _, err := s.Load(ctx, "a/b/c/1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a file under a deleted directory: %v", err)
	}
}

func TestKeysAreCanonicalAndRefusedWhenAmbiguous(t *testing.T) {
	r := redislab.Start(t, redislab.Options{})
	s := newStorage(t, r)
	ctx := t.Context()
	if err := s.Store(ctx, "/x/y/", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(ctx, "x/y"); err != nil || string(got) != "v" {
		t.Fatalf("Load(x/y) after Store(/x/y/) = %q, %v", got, err)
	}
	for _, bad := range []string{"x//y", "x/../y", "./x", "x/."} {
		if err := s.Store(ctx, bad, []byte("v")); err == nil {
			t.Errorf("Store(%q) accepted an ambiguous key", bad)
		}
	}
	if err := s.Store(ctx, "", []byte("v")); err == nil {
		t.Error("Store at the root accepted")
	}
}

func TestPrefixesKeepDeploymentsApart(t *testing.T) {
	r := redislab.Start(t, redislab.Options{})
	a := provision(t, &Storage{Prefix: "one"}, r.Addr)
	b := provision(t, &Storage{Prefix: "two"}, r.Addr)
	ctx := t.Context()
	if err := a.Store(ctx, "k", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if b.Exists(ctx, "k") {
		t.Fatal("a key stored under prefix one is visible under prefix two")
	}
	// Other modules reach the connection through Caddy's storage value.
	var st certmagic.Storage = a
	shared, ok := st.(interface {
		RedisClient() redis.UniversalClient
		KeyPrefix() string
	})
	if !ok || shared.KeyPrefix() != "one" {
		t.Fatalf("the storage does not share its connection and prefix: %t", ok)
	}
	if got, err := shared.RedisClient().HGet(ctx, "one/k", fieldValue).Result(); err != nil || got != "a" {
		t.Fatalf("through the shared client: %q, %v", got, err)
	}
	if a.RedisClient() != b.RedisClient() {
		t.Fatal("two storages on the same server and settings do not share one connection")
	}
}

func TestLockExcludesAnotherStorageUntilUnlock(t *testing.T) {
	r := redislab.Start(t, redislab.Options{})
	a, b := newStorage(t, r), newStorage(t, r)
	ctx := t.Context()
	if err := a.Lock(ctx, "issue_cert_a.example"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, "issue_cert_a.example"); ok || err != nil {
		t.Fatalf("TryLock on a held lock = %t, %v", ok, err)
	}
	var inside atomic.Int32
	var maxInside atomic.Int32
	var wg sync.WaitGroup
	work := func(s *Storage) {
		defer wg.Done()
		if err := s.Lock(ctx, "job"); err != nil {
			t.Error(err)
			return
		}
		if n := inside.Add(1); n > maxInside.Load() {
			maxInside.Store(n)
		}
		time.Sleep(20 * time.Millisecond)
		inside.Add(-1)
		if err := s.Unlock(ctx, "job"); err != nil {
			t.Error(err)
		}
	}
	for range 5 {
		wg.Add(2)
		go work(a)
		go work(b)
	}
	wg.Wait()
	if maxInside.Load() != 1 {
		t.Fatalf("%d holders of one lock at once", maxInside.Load())
	}
	done := make(chan error, 1)
	go func() { done <- b.Lock(ctx, "issue_cert_a.example") }()
	select {
	case err := <-done:
		t.Fatalf("Lock returned (%v) while another storage held the lock", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := a.Unlock(ctx, "issue_cert_a.example"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Lock did not return after the holder unlocked")
	}
	if err := a.Unlock(ctx, "issue_cert_a.example"); err == nil {
		t.Fatal("a storage that does not hold the lock released it")
	}
	if ok, _ := a.TryLock(ctx, "issue_cert_a.example"); ok {
		t.Fatal("the other storage's lock was taken after a non-holder's Unlock")
	}
	if err := b.Unlock(ctx, "issue_cert_a.example"); err != nil {
		t.Fatal(err)
	}
}

func TestHeldLockOutlivesItsTTLWhileRefreshed(t *testing.T) {
	r := redislab.Start(t, redislab.Options{})
	a := provision(t, &Storage{Prefix: "t", LockTTL: caddy.Duration(400 * time.Millisecond)}, r.Addr)
	b := provision(t, &Storage{Prefix: "t", LockTTL: caddy.Duration(400 * time.Millisecond)}, r.Addr)
	ctx := t.Context()
	if err := a.Lock(ctx, "long"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond) // three lifetimes
	if ok, err := b.TryLock(ctx, "long"); ok || err != nil {
		t.Fatalf("a refreshed lock was taken after its TTL: %t, %v", ok, err)
	}
	if err := a.Unlock(ctx, "long"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(a.metrics.ops.WithLabelValues("refresh", resultOK)); got < 2 {
		t.Fatalf("refresh ok counted %v times, want at least 2", got)
	}
}

func TestLockOfADeadHolderExpires(t *testing.T) {
	r := redislab.Start(t, redislab.Options{})
	ttl := 500 * time.Millisecond
	dead := provision(t, &Storage{Prefix: "t", LockTTL: caddy.Duration(ttl)}, r.Addr)
	b := newStorage(t, r)
	ctx := t.Context()
	if err := dead.Lock(ctx, "job"); err != nil {
		t.Fatal(err)
	}
	// The holder dies: it stops refreshing and never unlocks.
	dead.mu.Lock()
	h := dead.held["job"]
	dead.mu.Unlock()
	h.stopRefresh()
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.Lock(wctx, "job"); err != nil {
		t.Fatalf("the dead holder's lock never expired: %v", err)
	}
	if waited := time.Since(start); waited > ttl+time.Second {
		t.Fatalf("waited %s for a lock with a %s TTL", waited, ttl)
	}
	if err := dead.Unlock(ctx, "job"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("the dead holder's late Unlock: %v, want an expired error", err)
	}
	if ok, _ := dead.TryLock(ctx, "job"); ok {
		t.Fatal("the dead holder's late Unlock released the new holder's lock")
	}
	if err := b.Unlock(ctx, "job"); err != nil {
		t.Fatal(err)
	}
}

func TestLockHonoursContextWhileWaiting(t *testing.T) {
	r := redislab.Start(t, redislab.Options{})
	a, b := newStorage(t, r), newStorage(t, r)
	if err := a.Lock(t.Context(), "job"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Unlock(context.Background(), "job") }()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := b.Lock(ctx, "job")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock while held with a 300ms context: %v, want DeadlineExceeded", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("Lock ignored its context for %s", waited)
	}
	cctx, ccancel := context.WithCancel(t.Context())
	ccancel()
	if err := b.Lock(cctx, "free"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with a canceled context: %v", err)
	}
}

func TestRedisDownFailsOperationsAndCountsThem(t *testing.T) {
	r := redislab.Start(t, redislab.Options{})
	s := provision(t, &Storage{Prefix: "t", Timeout: "1"}, r.Addr)
	ctx := t.Context()
	if err := s.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	before := testutil.ToFloat64(s.metrics.ops.WithLabelValues("store", resultError))
	if err := s.Store(ctx, "k", []byte("v")); err == nil {
		t.Fatal("Store succeeded with Redis down")
	}
	if _, err := s.Load(ctx, "k"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load with Redis down: %v, want an error that is not fs.ErrNotExist", err)
	}
	if err := s.Lock(ctx, "job"); err == nil {
		t.Fatal("Lock succeeded with Redis down")
	}
	if got := testutil.ToFloat64(s.metrics.ops.WithLabelValues("store", resultError)); got != before+1 {
		t.Fatalf("store errors counted %v, want %v", got, before+1)
	}
	r.Restart(t)
	if err := s.Store(ctx, "k", []byte("again")); err != nil {
		t.Fatalf("Store after Redis came back: %v", err)
	}
}

func TestProvisionFailsClearlyWhenRedisIsDown(t *testing.T) {
	r := redislab.Start(t, redislab.Options{})
	r.Stop()
	s := &Storage{Address: []string{r.Addr}, Timeout: "500ms"}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	start := time.Now()
	err := s.Provision(ctx)
	_ = s.Cleanup()
	if err == nil || !strings.Contains(err.Error(), "address "+r.Addr) || !strings.Contains(err.Error(), "did not answer within timeout") {
		t.Fatalf("Provision with Redis down: %v", err)
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Fatalf("Provision waited %s with a 500ms timeout", waited)
	}
}

func TestProvisionNamesTheBadField(t *testing.T) {
	tests := []struct {
		s    Storage
		want string
	}{
		{Storage{Address: []string{"nohost"}}, "address:"},
		{Storage{Address: []string{"a:1", "b:2"}}, "address:"},
		{Storage{Port: []string{"70000"}}, "port:"},
		{Storage{Host: []string{"a b"}}, "host:"},
		{Storage{Timeout: "soon"}, "timeout:"},
		{Storage{Timeout: "0"}, "timeout:"},
		{Storage{DB: -1}, "db:"},
		{Storage{Prefix: "a/b"}, "key_prefix:"},
		{Storage{LockTTL: caddy.Duration(time.Millisecond)}, "lock_ttl:"},
		{Storage{TLSInsecure: true}, "need tls_enabled"},
		{Storage{TLSEnabled: true, TLSServerCertsPEM: "nope"}, "tls_server_certs_pem:"},
		{Storage{TLSEnabled: true, TLSServerCertsPath: "/nonexistent.pem"}, "tls_server_certs_path:"},
	}
	for _, tt := range tests {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		s := tt.s
		err := s.Provision(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: Provision = %v, want an error naming %q", tt.s, err, tt.want)
		}
	}
}
