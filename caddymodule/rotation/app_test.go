package rotation

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"

	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/policyguard"
)

// testClock is the app's injected clock.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

var (
	windowStart = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	windowEnd   = time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC)
	inWindow    = windowStart.Add(24 * time.Hour)
)

// rotationKeys are two signing pairs written once per test process: RSA key
// generation is slow on a busy machine.
type rotationKeys struct {
	currentKey, currentCert, nextKey, nextCert string
	current, next                              *policyguard.Signer
}

var (
	keysOnce sync.Once
	testKeys rotationKeys
	keysErr  error
)

func testRotationKeys(t testing.TB) rotationKeys {
	t.Helper()
	keysOnce.Do(func() {
		dir, err := os.MkdirTemp("", "legacygate-rotation-keys-")
		if err != nil {
			keysErr = err
			return
		}
		write := func(name string) (string, string, *policyguard.Signer) {
			key, cert, err := policyguard.GenerateSigningKey(2048, "test "+name)
			if err != nil {
				keysErr = err
				return "", "", nil
			}
			keyPEM, certPEM, _ := policyguard.EncodeKeyPair(key, cert)
			kf, cf := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".crt")
			if err := os.WriteFile(kf, keyPEM, 0o600); err != nil {
				keysErr = err
			}
			if err := os.WriteFile(cf, certPEM, 0o644); err != nil {
				keysErr = err
			}
			s, _ := policyguard.NewSigner(key, cert)
			return kf, cf, s
		}
		testKeys.currentKey, testKeys.currentCert, testKeys.current = write("current")
		testKeys.nextKey, testKeys.nextCert, testKeys.next = write("next")
	})
	if keysErr != nil {
		t.Fatalf("making test keys: %v", keysErr)
	}
	return testKeys
}

// appBlock is a legacygate global option with the test keys, a rotation
// over windowStart–windowEnd and file storage in dir; extra lines go into
// the rotation block.
func appBlock(t testing.TB, dir, instance string, rotationLines ...string) string {
	t.Helper()
	k := testRotationKeys(t)
	return "legacygate {\n" +
		"  signing_key current " + k.currentKey + " " + k.currentCert + "\n" +
		"  signing_key next " + k.nextKey + " " + k.nextCert + "\n" +
		"  client_id {query.hostid}\n" +
		"  instance_id " + instance + "\n" +
		"  storage file_system " + dir + "\n" +
		"  rotation {\n" +
		"    window 2026-12-01T00:00:00Z 2026-12-31T00:00:00Z\n" +
		"    confirm_heartbeats 3\n" +
		"    grace 90d\n" +
		"    " + strings.Join(rotationLines, "\n    ") + "\n" +
		"  }\n}"
}

// startApp parses block, provisions the app with clock and starts it; it
// is stopped and cleaned up when the test ends.
func startApp(t *testing.T, block string, clock *testClock) *App {
	t.Helper()
	a, err := tryStartApp(t, block, clock)
	if err != nil {
		t.Fatalf("provisioning the app: %v", err)
	}
	return a
}

func tryStartApp(t *testing.T, block string, clock *testClock) (*App, error) {
	t.Helper()
	a := new(App)
	if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		return nil, err
	}
	a.now = clock.Now
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := provisionLikeCaddy(ctx, a); err != nil {
		_ = a.Cleanup()
		return nil, err
	}
	if err := a.Start(); err != nil {
		return nil, err
	}
	stopped := false
	t.Cleanup(func() { stopApp(t, a, &stopped) })
	return a, nil
}

// stopApp stops an app as Caddy does when it unloads a configuration.
func stopApp(t *testing.T, a *App, stopped *bool) {
	t.Helper()
	if *stopped {
		return
	}
	*stopped = true
	if err := a.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	if err := a.Cleanup(); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

// clientRequest is a request as Caddy hands it to a handler: with the HTTP
// placeholders and a variable table.
func clientRequest(method, target string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	*r = *r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	caddyhttp.NewTestReplacer(r)
	return r
}

func heartbeat(a *App, host string) {
	a.ObserveHeartbeat(clientRequest("GET", "/secars/secars.dll?action=index&hostid="+host), false)
}

func fetchAnchor(a *App, host string) {
	a.AnchorServed(clientRequest("GET", "/secars/secars.dll?action=sylink&hostid="+host))
}

func keyFor(a *App, host string) string {
	s, hold := a.SignerFor(clientRequest("GET", "/secars/secars.dll?action=profile&hostid="+host))
	if hold {
		return "hold"
	}
	switch s {
	case a.current:
		return "current"
	case a.next:
		return "next"
	}
	return "unknown"
}

// confirm fetches the anchor for host then sends beats heartbeats, the
// clock moving a minute before each step (heartbeats count only after the
// fetch).
func confirm(a *App, clock *testClock, host string, beats int) {
	clock.Set(clock.Now().Add(time.Minute))
	heartbeat(a, host)
	fetchAnchor(a, host)
	for range beats {
		clock.Set(clock.Now().Add(time.Minute))
		heartbeat(a, host)
	}
}

func TestAppSignsEachClientWithTheKeyItHasConfirmed(t *testing.T) {
	clock := &testClock{now: windowStart.Add(-time.Hour)}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	step := func() { clock.Set(clock.Now().Add(time.Minute)) }

	if got := keyFor(a, "H1"); got != "current" {
		t.Fatalf("before the window: %s, want current", got)
	}
	clock.Set(inWindow)
	heartbeat(a, "H1")
	step()
	fetchAnchor(a, "H1")
	for i := range 3 {
		if got := keyFor(a, "H1"); got != "hold" {
			t.Fatalf("after the anchor fetch and %d heartbeats: %s, want hold", i, got)
		}
		step()
		heartbeat(a, "H1")
	}
	if got := keyFor(a, "H1"); got != "next" {
		t.Fatalf("after the anchor fetch and 3 heartbeats: %s, want next", got)
	}
	step()
	heartbeat(a, "H2")
	for range 5 {
		step()
		heartbeat(a, "H2") // heartbeats without the anchor fetch do not confirm
	}
	step()
	fetchAnchor(a, "H4") // fetched the anchor, never confirmed
	tests := []struct {
		name string
		at   time.Time
		host string
		want string
	}{
		{"confirmed in the window", inWindow.Add(time.Hour), "H1", "next"},
		{"unconfirmed in the window", inWindow.Add(time.Hour), "H2", "current"},
		{"never seen in the window", inWindow.Add(time.Hour), "H3", "current"},
		{"no client id in the window", inWindow.Add(time.Hour), "", "current"},
		{"unconfirmed in the grace", windowEnd.Add(24 * time.Hour), "H2", "current"},
		{"confirmed in the grace", windowEnd.Add(24 * time.Hour), "H1", "next"},
		{"unconfirmed after the grace", windowEnd.Add(91 * 24 * time.Hour), "H2", "next"},
		{"anchor fetched, unconfirmed in the window", inWindow.Add(time.Hour), "H4", "hold"},
		{"anchor fetched, unconfirmed in the grace", windowEnd.Add(24 * time.Hour), "H4", "hold"},
		{"anchor fetched, unconfirmed after the grace", windowEnd.Add(91 * 24 * time.Hour), "H4", "next"},
		{"no client id after the grace", windowEnd.Add(91 * 24 * time.Hour), "", "next"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock.Set(tt.at)
			if got := keyFor(a, tt.host); got != tt.want {
				t.Fatalf("%s at %s: %s, want %s", tt.host, tt.at.Format(time.RFC3339), got, tt.want)
			}
		})
	}
}

func TestAppAnchorIsTheNextCertificateFromTheWindowsStart(t *testing.T) {
	clock := &testClock{}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	k := testRotationKeys(t)
	tests := []struct {
		at       time.Time
		wantNext bool
	}{
		{windowStart.Add(-time.Second), false},
		{windowStart, true},
		{windowEnd.Add(time.Hour), true},
		{windowEnd.Add(365 * 24 * time.Hour), true},
	}
	for _, tt := range tests {
		cert, next := a.Anchor(tt.at)
		want := k.current.Cert()
		if tt.wantNext {
			want = k.next.Cert()
		}
		if next != tt.wantNext || !cert.Equal(want) {
			t.Errorf("anchor at %s: next=%v, want %v", tt.at.Format(time.RFC3339), next, tt.wantNext)
		}
	}
}

func TestAppCountsAHeartbeatOncePerRequest(t *testing.T) {
	clock := &testClock{now: inWindow}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	fetchAnchor(a, "H1")
	clock.Set(inWindow.Add(time.Minute))
	r := clientRequest("GET", "/secars/secars.dll?action=index&hostid=H1")
	a.ObserveHeartbeat(r, true)  // plaintext_bridge
	a.ObserveHeartbeat(r, false) // policy_guard behind it, same request
	st, _ := a.table.Lookup("H1")
	if st.HeartbeatsSince != 1 || !st.SeenPlaintext {
		t.Fatalf("after one request seen by two handlers: %d heartbeats, plaintext %v; want 1, true", st.HeartbeatsSince, st.SeenPlaintext)
	}
	a.ObserveHeartbeat(clientRequest("GET", "/secars/secars.dll?action=profile&hostid=H1"), false)
	if st, _ := a.table.Lookup("H1"); st.HeartbeatsSince != 1 {
		t.Fatalf("a profile request counted as a heartbeat: %d", st.HeartbeatsSince)
	}
}

func TestAppProvisionErrorsNameTheField(t *testing.T) {
	k := testRotationKeys(t)
	dir := t.TempDir()
	base := func(keys, rotation string) string {
		return "legacygate {\n" + keys + "\n storage file_system " + dir + "\n" + rotation + "\n}"
	}
	keys := "signing_key current " + k.currentKey + " " + k.currentCert + "\nsigning_key next " + k.nextKey + " " + k.nextCert
	rotation := func(lines string) string { return "rotation {\n" + lines + "\n}" }
	window := "window 2026-12-01T00:00:00Z 2026-12-31T00:00:00Z"
	tests := []struct {
		name  string
		block string
		want  string
	}{
		{"inverted window", base(keys, rotation("window 2026-12-31T00:00:00Z 2026-12-01T00:00:00Z")), "window: end 2026-12-01T00:00:00Z is not after start"},
		{"empty window", base(keys, rotation("window 2026-12-01T00:00:00Z 2026-12-01T00:00:00Z")), "window: end"},
		{"overlapping windows", base(keys, rotation(window+"\nwindow 2026-12-15T00:00:00Z 2027-01-15T00:00:00Z")), "window: given twice"},
		{"window not a time", base(keys, rotation("window tomorrow 2026-12-31T00:00:00Z")), `window: "tomorrow" is not an RFC 3339 time`},
		{"no window", base(keys, rotation("grace 1d")), "window: a start and an end are required"},
		{"missing key file", base("signing_key current /nonexistent/2019.key "+k.currentCert+"\nsigning_key next "+k.nextKey+" "+k.nextCert, rotation(window)), "signing_key current: key file"},
		{"missing certificate file", base("signing_key current "+k.currentKey+" /nonexistent/2019.crt\nsigning_key next "+k.nextKey+" "+k.nextCert, rotation(window)), "signing_key current: certificate file"},
		{"key and certificate do not match", base("signing_key current "+k.currentKey+" "+k.nextCert+"\nsigning_key next "+k.nextKey+" "+k.nextCert, rotation(window)), "signing_key current:"},
		{"next equal to current", base("signing_key current "+k.currentKey+" "+k.currentCert+"\nsigning_key next "+k.currentKey+" "+k.currentCert, rotation(window)), "signing_key next: same public key as signing_key current"},
		{"bad duration", base(keys, rotation(window+"\ngrace 90x")), `grace: "90x" is not a positive duration`},
		{"negative duration", base(keys, rotation(window+"\ngrace -1d")), `grace: "-1d" is not a positive duration`},
		{"confirm_heartbeats zero", base(keys, rotation(window+"\nconfirm_heartbeats 0")), `confirm_heartbeats: "0" is not a whole number of at least 1`},
		{"max_clients zero", base(keys, rotation(window+"\nmax_clients 0")), `max_clients: "0" is not a whole number of at least 1`},
		{"purge_age not longer than persist_interval", base(keys, rotation(window+"\npersist_interval 1m\npurge_age 2m")), "purge_age: 2m0s must be at least three times persist_interval (1m0s)"},
		{"purge_age shorter than the default persist_interval", base(keys, rotation(window+"\npurge_age 10s")), "purge_age: 10s must be at least three times persist_interval (30s)"},
		{"hold_retry_after under a second", base(keys, rotation(window+"\nhold_retry_after 500ms")), "hold_retry_after: 500ms is not whole seconds from 1s to 1h"},
		{"hold_retry_after over an hour", base(keys, rotation(window+"\nhold_retry_after 2h")), "hold_retry_after: 2h0m0s is not whole seconds from 1s to 1h"},
		{"hold_retry_after not whole seconds", base(keys, rotation(window+"\nhold_retry_after 1500ms")), "hold_retry_after: 1.5s is not whole seconds"},
		{"hold_retry_after not a duration", base(keys, rotation(window+"\nhold_retry_after soon")), `hold_retry_after: "soon" is not a positive duration`},
		{"no current key", base("signing_key next "+k.nextKey+" "+k.nextCert, rotation(window)), "signing_key current: required"},
		{"rotation without next", base("signing_key current "+k.currentKey+" "+k.currentCert, rotation(window)), "signing_key next: a rotation needs the next key"},
		{"next without rotation", base(keys, ""), "rotation: signing_key next is set but no rotation window"},
		{"unknown role", base(keys+"\nsigning_key previous "+k.currentKey+" "+k.currentCert, rotation(window)), `signing_key: role "previous" is neither current nor next`},
		{"key given twice", base(keys+"\nsigning_key next generate", rotation(window)), "signing_key next: given twice"},
		{"generate with a bad name", base("signing_key current "+k.currentKey+" "+k.currentCert+"\nsigning_key next generate ../x", rotation(window)), `signing_key next: generate: "../x" is not a name`},
		{"bad instance id", base(keys+"\ninstance_id a/b", rotation(window)), `instance_id: "a/b" is not a name`},
		{"unknown subdirective", base(keys, rotation(window+"\nwindows 3")), `rotation: unknown subdirective "windows"`},
		{"empty heartbeat", base(keys+"\nheartbeat", rotation(window)), "heartbeat: want [<path>]"},
		{"query placeholder inside client_id", base(keys+"\nclient_id id-{query.hostid}", rotation(window)), `client_id: "id-{http.request.uri.query.hostid}": a query placeholder must be the whole client_id`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tryStartApp(t, tt.block, &testClock{now: inWindow})
			if err == nil {
				t.Fatalf("provisioned; want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestAppHoldRetryAfterDefaultsToAMinute(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
		want  time.Duration
	}{
		{"default", nil, 60 * time.Second},
		{"configured", []string{"hold_retry_after 5s"}, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := startApp(t, appBlock(t, t.TempDir(), "a", tt.lines...), &testClock{now: inWindow})
			if got := a.HoldRetryAfter(); got != tt.want {
				t.Fatalf("holdRetryAfter = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestAppGracePeriodTakesDays(t *testing.T) {
	a := startApp(t, appBlock(t, t.TempDir(), "a"), &testClock{now: inWindow})
	if got := a.table.Policy().Grace; got != 90*24*time.Hour {
		t.Fatalf("grace 90d is %s, want 2160h", got)
	}
}

func TestAppRestartLosesNoProgress(t *testing.T) {
	dir := t.TempDir()
	clock := &testClock{now: inWindow}
	first := new(bool)
	a, err := tryStartAppNoCleanup(t, appBlock(t, dir, "gw1", "persist_interval 1h"), clock)
	if err != nil {
		t.Fatal(err)
	}
	confirm(a, clock, "H1", 3)
	fetchAnchor(a, "H2")
	clock.Set(clock.Now().Add(time.Minute))
	heartbeat(a, "H2")
	stopApp(t, a, first) // Cleanup saves, although the interval never came

	b := startApp(t, appBlock(t, dir, "gw1", "persist_interval 1h"), clock)
	if got := keyFor(b, "H1"); got != "next" {
		t.Fatalf("confirmed client after the restart: %s, want next", got)
	}
	st, ok := b.table.Lookup("H2")
	if !ok || st.AnchorFetched.IsZero() || st.HeartbeatsSince != 1 {
		t.Fatalf("H2 after the restart: %+v (tracked %v), want its anchor fetch and 1 heartbeat", st, ok)
	}
}

// tryStartAppNoCleanup is tryStartApp for apps the test stops itself.
func tryStartAppNoCleanup(t *testing.T, block string, clock *testClock) (*App, error) {
	t.Helper()
	a := new(App)
	if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		return nil, err
	}
	a.now = clock.Now
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := provisionLikeCaddy(ctx, a); err != nil {
		return nil, err
	}
	return a, a.Start()
}

func TestAppInstancesSharingStorageAgree(t *testing.T) {
	dir := t.TempDir()
	clock := &testClock{now: inWindow}
	a := startApp(t, appBlock(t, dir, "gw-a", "persist_interval 50ms"), clock)
	b := startApp(t, appBlock(t, dir, "gw-b", "persist_interval 50ms"), clock)
	confirm(a, clock, "H1", 3)
	if got := keyFor(a, "H1"); got != "next" {
		t.Fatalf("at A: %s, want next", got)
	}
	waitFor(t, "B to sign H1 with next", func() bool { return keyFor(b, "H1") == "next" })
	// And back: progress made through B reaches A.
	fetchAnchor(b, "H2")
	waitFor(t, "A to learn H2's anchor fetch", func() bool {
		st, ok := a.table.Lookup("H2")
		return ok && !st.AnchorFetched.IsZero()
	})
	for _, name := range []string{"gw-a", "gw-b"} {
		if _, err := os.Stat(filepath.Join(dir, "legacygate", "rotation", "1796083200-1798675200", name+".lgrt")); err != nil {
			t.Errorf("progress file of %s: %v", name, err)
		}
	}
}

func TestAppSkipsCorruptProgressAndPurgesDeadInstances(t *testing.T) {
	dir := t.TempDir()
	folder := filepath.Join(dir, "legacygate", "rotation", "1796083200-1798675200")
	if err := os.MkdirAll(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	corrupt := filepath.Join(folder, "corrupt.lgrt")
	dead := filepath.Join(folder, "dead.lgrt")
	if err := os.WriteFile(corrupt, []byte("LGRT not a snapshot"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The dead instance had confirmed H9.
	clock := &testClock{now: inWindow}
	src := startApp(t, appBlock(t, t.TempDir(), "src"), clock)
	confirm(src, clock, "H9", 3)
	if err := src.Stop(); err != nil { // no longer the running app: nothing to take over
		t.Fatal(err)
	}
	data, err := src.table.Snapshot().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dead, data, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-8 * 24 * time.Hour)
	if err := os.Chtimes(dead, old, old); err != nil {
		t.Fatal(err)
	}

	a := startApp(t, appBlock(t, dir, "live"), clock)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatalf("the dead instance's file (8 days old, purge_age 7d) is still there: %v", err)
	}
	if _, err := os.Stat(corrupt); err != nil {
		t.Fatalf("the corrupt file was removed: %v; it must stay for the operator", err)
	}
	if a.table.Counts(clock.Now()).Tracked != 0 {
		t.Fatal("clients were read from a corrupt or purged file")
	}
}

func TestAppGeneratedKeysAreSharedThroughStorage(t *testing.T) {
	dir := t.TempDir()
	k := testRotationKeys(t)
	block := func(instance string) string {
		return "legacygate {\n signing_key current " + k.currentKey + " " + k.currentCert +
			"\n signing_key next generate 2026\n instance_id " + instance + "\n storage file_system " + dir +
			"\n rotation {\n  window 2026-12-01T00:00:00Z 2026-12-31T00:00:00Z\n }\n}"
	}
	clock := &testClock{now: inWindow}
	var apps [2]*App
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range apps {
		wg.Go(func() { apps[i], errs[i] = tryStartApp(t, block([]string{"a", "b"}[i]), clock) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if apps[0].next.KeyID() != apps[1].next.KeyID() {
		t.Fatalf("two gateways generated different next keys: %s and %s", apps[0].next.KeyID(), apps[1].next.KeyID())
	}
	for _, ext := range []string{".key", ".crt"} {
		if _, err := os.Stat(filepath.Join(dir, "legacygate", "keys", "2026"+ext)); err != nil {
			t.Errorf("generated key file: %v", err)
		}
	}
	again := startApp(t, block("c"), clock)
	if again.next.KeyID() != apps[0].next.KeyID() {
		t.Fatal("a restart generated a new key instead of loading the stored one")
	}
}

func TestAppWritesAGeneratedKeyAgainWhenStorageLostIt(t *testing.T) {
	dir := t.TempDir()
	k := testRotationKeys(t)
	block := "legacygate {\n signing_key current " + k.currentKey + " " + k.currentCert +
		"\n signing_key next generate 2026\n instance_id a\n storage file_system " + dir +
		"\n rotation {\n  window 2026-12-01T00:00:00Z 2026-12-31T00:00:00Z\n }\n}"
	clock := &testClock{now: inWindow}
	a := startApp(t, block, clock)
	keys := filepath.Join(dir, "legacygate", "keys")
	want, err := os.ReadFile(filepath.Join(keys, "2026.crt"))
	if err != nil {
		t.Fatal(err)
	}
	// Storage comes back empty (a Redis restarted without persistence).
	if err := os.RemoveAll(filepath.Join(dir, "legacygate")); err != nil {
		t.Fatal(err)
	}
	a.syncOnce()
	got, err := os.ReadFile(filepath.Join(keys, "2026.crt"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after a sync the lost key is not back as it was: %v", err)
	}
	if again := startApp(t, strings.Replace(block, "instance_id a", "instance_id b", 1), clock); again.next.KeyID() != a.next.KeyID() {
		t.Fatal("a gateway started after the loss generated another next key")
	}
}

func TestAppTableIsBounded(t *testing.T) {
	clock := &testClock{now: inWindow}
	a := startApp(t, appBlock(t, t.TempDir(), "a", "max_clients 10"), clock)
	for i := range 100 {
		heartbeat(a, "H"+strings.Repeat("x", i))
	}
	if c := a.table.Counts(clock.Now()); c.Tracked != 10 || c.Evicted != 90 {
		t.Fatalf("max_clients 10 after 100 clients: tracked %d, evicted %d", c.Tracked, c.Evicted)
	}
}

func TestAppGaugesReportProgressWithoutClientLabels(t *testing.T) {
	clock := &testClock{now: inWindow}
	a := new(App)
	if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(appBlock(t, t.TempDir(), "a"))); err != nil {
		t.Fatal(err)
	}
	a.now = clock.Now
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Cleanup()
	confirm(a, clock, "H1", 3)
	heartbeat(a, "H2")
	a.ObserveHeartbeat(clientRequest("GET", "/secars/secars.dll?action=index&hostid=H3"), true)
	a.updateGauges()
	families, err := ctx.GetMetricsRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "legacygate_rotation_") {
			continue
		}
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() != "state" {
					t.Errorf("%s has label %q; only state is allowed", name, l.GetName())
				}
				name += "{" + l.GetValue() + "}"
			}
			got[name] = m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{
		"legacygate_rotation_clients{confirmed}":      1,
		"legacygate_rotation_clients{pending}":        2,
		"legacygate_rotation_clients{anchor_fetched}": 0,
		"legacygate_rotation_clients{unseen}":         0,
		"legacygate_rotation_plaintext_clients":       1,
		"legacygate_rotation_confirmed_ratio":         1.0 / 3,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestAppClientIDIsCaseFolded(t *testing.T) {
	clock := &testClock{now: inWindow}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	// One client, its id and the parameter name in several cases: the
	// anchor fetch and three heartbeats confirm it.
	a.AnchorServed(clientRequest("GET", "/secars/secars.dll?action=sylink&hostid=0a1b2c3d"))
	for i, q := range []string{"action=index&HOSTID=0A1B2C3D", "action=index&hostid=0a1B2c3D", "ACTION=INDEX&HostId=0a1b2c3d"} {
		clock.Set(inWindow.Add(time.Duration(i+1) * time.Minute))
		a.ObserveHeartbeat(clientRequest("GET", "/secars/secars.dll?"+q), false)
	}
	st, ok := a.table.Lookup("0A1B2C3D")
	if !ok || st.HeartbeatsSince != 3 || st.AnchorFetched.IsZero() {
		t.Fatalf("client 0A1B2C3D: tracked %v, %d heartbeats since the anchor (fetched %v); want 3", ok, st.HeartbeatsSince, st.AnchorFetched)
	}
	if c := a.table.Counts(clock.Now()); c.Tracked != 1 {
		t.Fatalf("%d clients tracked, want 1", c.Tracked)
	}
	for _, id := range []string{"0a1b2c3d", "0A1B2C3D", "0a1B2C3d"} {
		if got := keyFor(a, id); got != "next" {
			t.Errorf("hostid=%s: %s, want next (confirmed)", id, got)
		}
	}
}

func TestAppAmbiguousClientIDIsNeitherTrackedNorSignedFor(t *testing.T) {
	tests := []struct{ name, query string }{
		{"host id twice", "hostid=H1&hostid=H2"},
		{"host id twice, same value", "hostid=H1&hostid=H1"},
		{"host id twice, case variants of the name", "hostid=H1&HOSTID=h1"},
		{"host id twice, one escaped", "hostid=H1&host%69d=H1"},
		{"malformed escape", "hostid=H%zz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &testClock{now: inWindow}
			a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
			confirm(a, clock, "H1", 3)
			tracked := a.table.Counts(clock.Now()).Tracked
			if _, err := a.clientID(clientRequest("GET", "/secars/secars.dll?action=profile&"+tt.query)); err == nil {
				t.Fatal("clientID: no error")
			}
			a.AnchorServed(clientRequest("GET", "/secars/secars.dll?action=sylink&"+tt.query))
			a.ObserveHeartbeat(clientRequest("GET", "/secars/secars.dll?action=index&"+tt.query), false)
			if c := a.table.Counts(clock.Now()); c.Tracked != tracked {
				t.Fatalf("%d clients tracked after ambiguous requests, want %d", c.Tracked, tracked)
			}
			if st, _ := a.table.Lookup("H1"); st.HeartbeatsSince != 3 {
				t.Fatalf("H1 has %d heartbeats since its anchor, want 3: an ambiguous request counted", st.HeartbeatsSince)
			}
			s, hold := a.SignerFor(clientRequest("GET", "/secars/secars.dll?action=profile&"+tt.query))
			if s != nil || hold {
				t.Fatalf("signerFor: signer %v, hold %v; want no signer (the payload is refused)", s, hold)
			}
		})
	}
}

func TestRequestMatcherReadsOneCanonicalValue(t *testing.T) {
	m := newRequestMatcher(RequestSpec{Path: "/secars/secars.dll", Query: map[string]string{"action": "log"}})
	tests := []struct {
		name, target string
		match        bool
		err          error
	}{
		{"exact", "/secars/secars.dll?action=log&hostid=H1", true, nil},
		{"value case ignored", "/secars/secars.dll?action=LOG", true, nil},
		{"name case ignored", "/SECARS/secars.dll?Action=log", true, nil},
		{"escaped name", "/secars/secars.dll?act%69on=log", true, nil},
		{"other value", "/secars/secars.dll?action=index", false, nil},
		{"absent", "/secars/secars.dll?hostid=H1", false, nil},
		{"other path", "/secreg/secreg.dll?action=log", false, nil},
		{"twice, first says index", "/secars/secars.dll?action=index&action=log", false, query.ErrDuplicate},
		{"twice, first says log", "/secars/secars.dll?action=log&action=index", false, query.ErrDuplicate},
		{"twice, case variants of the name", "/secars/secars.dll?ACTION=index&action=log", false, query.ErrDuplicate},
		{"semicolon is no separator", "/secars/secars.dll?action=index;action=log", false, nil},
		{"malformed escape", "/secars/secars.dll?action=%zz", false, query.ErrEscape},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := m.match(clientRequest("GET", tt.target))
			if ok != tt.match || !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("match = %v, %v; want %v, %v", ok, err, tt.match, tt.err)
			}
		})
	}
}

func TestAppReloadTakesOverTheRunningProgress(t *testing.T) {
	dir := t.TempDir()
	clock := &testClock{now: inWindow}
	old := startApp(t, appBlock(t, dir, "gw1", "persist_interval 1h"), clock)
	confirm(old, clock, "H1", 3)
	// A reload provisions the new configuration while the old one runs,
	// before the old one's final save.
	reloaded := startApp(t, appBlock(t, dir, "gw1", "persist_interval 1h"), clock)
	if got := keyFor(reloaded, "H1"); got != "next" {
		t.Fatalf("right after the reload: %s, want next", got)
	}
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
