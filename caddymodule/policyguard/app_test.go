package policyguard

// The legacygate app as the policy_guard tests need it, started through
// its exported API (helpers of the rotation package's own tests).

import (
	"context"
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

	"github.com/legacygate/legacygate/caddymodule/rotation"
	guardlib "github.com/legacygate/legacygate/policyguard"
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
	current, next                              *guardlib.Signer
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
		write := func(name string) (string, string, *guardlib.Signer) {
			key, cert, err := guardlib.GenerateSigningKey(2048, "test "+name)
			if err != nil {
				keysErr = err
				return "", "", nil
			}
			keyPEM, certPEM, _ := guardlib.EncodeKeyPair(key, cert)
			kf, cf := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".crt")
			if err := os.WriteFile(kf, keyPEM, 0o600); err != nil {
				keysErr = err
			}
			if err := os.WriteFile(cf, certPEM, 0o644); err != nil {
				keysErr = err
			}
			s, _ := guardlib.NewSigner(key, cert)
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
func startApp(t *testing.T, block string, clock *testClock) *rotation.App {
	t.Helper()
	a, err := tryStartApp(t, block, clock)
	if err != nil {
		t.Fatalf("provisioning the app: %v", err)
	}
	return a
}

func tryStartApp(t *testing.T, block string, clock *testClock) (*rotation.App, error) {
	t.Helper()
	a := new(rotation.App)
	if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		return nil, err
	}
	a.SetClock(clock.Now)
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
func stopApp(t *testing.T, a *rotation.App, stopped *bool) {
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

func heartbeat(a *rotation.App, host string) {
	a.ObserveHeartbeat(clientRequest("GET", "/secars/secars.dll?action=index&hostid="+host), false)
}

func fetchAnchor(a *rotation.App, host string) {
	a.AnchorServed(clientRequest("GET", "/secars/secars.dll?action=sylink&hostid="+host))
}

func keyFor(a *rotation.App, host string) string {
	s, hold := a.SignerFor(clientRequest("GET", "/secars/secars.dll?action=profile&hostid="+host))
	if hold {
		return "hold"
	}
	current, next := a.Signers()
	switch s {
	case current:
		return "current"
	case next:
		return "next"
	}
	return "unknown"
}
