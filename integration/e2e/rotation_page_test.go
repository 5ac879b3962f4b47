package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/legacygate/legacygate/integration/fleet"
	"github.com/legacygate/legacygate/integration/harness"
)

// chromiumPath is Debian's chromium; CI installs it (.ci/run).
const chromiumPath = "/usr/bin/chromium"

// hostileClientID is a client id a client could choose to attack the page:
// shown as text, it runs nothing.
const hostileClientID = "<script>window.pwned=1</script>"

// pageView is what a person reads on the rotation page.
type pageView struct {
	Updates    int    `json:"updates"`
	Phase      string `json:"phase"`
	Left       string `json:"left"`
	Percent    string `json:"percent"`
	Confirmed  string `json:"confirmed"`
	Tracked    string `json:"tracked"`
	Plaintext  string `json:"plaintext"`
	Stragglers string `json:"stragglers"`
	Status     string `json:"status"`
	Pwned      bool   `json:"pwned"`
	Scripts    int    `json:"scripts"`
	Images     int    `json:"images"`
}

// readPage is evaluated in the page: the visible text of its figures.
const readPage = `(() => {
  const t = id => document.getElementById(id).innerText;
  return {
    updates: +(document.body.getAttribute('data-updates') || 0),
    phase: t('window-phase'), left: t('window-left'), percent: t('confirmed-percent'),
    confirmed: t('confirmed-count'), tracked: t('tracked-count'),
    plaintext: t('plaintext-section'), stragglers: t('stragglers-section'), status: t('status'),
    pwned: window.pwned !== undefined, scripts: document.scripts.length, images: document.images.length,
  };
})()`

func (v pageView) confirmedCount(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(strings.ReplaceAll(v.Confirmed, ",", ""))
	if err != nil {
		t.Fatalf("the confirmed count reads %q: %v", v.Confirmed, err)
	}
	return n
}

// startChromium starts a headless chromium with a fresh profile and
// returns a tab's context. Without chromium the test is skipped, unless
// CI=true.
func startChromium(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("chromium is required in CI: %v", err)
		}
		t.Skipf("no chromium: %v", err)
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	ctx, cancelTab := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	return ctx
}

// pageCaddyfile is the window lab's gateway with heartbeat_limit in front
// of the manager, a keep file on the plaintext bridge, and the rotation
// page on a loopback-only site.
func pageCaddyfile(l *windowLab, dashPort int, keepFile string) string {
	c := l.windowCaddyfile(l.port, l.plainPort)
	c = strings.Replace(c, "(manager) {\n", "(manager) {\n\theartbeat_limit /secars/secars.dll {\n\t\tkey {query.hostid}\n\t\trate 50/1s\n\t\tburst 50\n\t}\n", 1)
	c = strings.Replace(c, "\t\toutside_window migrate\n", "\t\toutside_window migrate\n\t\tkeep "+keepFile+"\n", 1)
	return c + fmt.Sprintf(`
http://127.0.0.1:%d {
	bind 127.0.0.1
	legacygate_dashboard {
		refresh 500ms
		stragglers 10
	}
}
`, dashPort)
}

// pageFleetClients is enough clients for a page to read, and few enough to
// keep the test light on CI's two cores.
const pageFleetClients = 200

// pageFleet is the window lab's fleet (clients trusting the gateway's
// current certificate, a fifth on plain HTTP) with n clients.
func pageFleet(t *testing.T, l *windowLab, n int) *fleet.Fleet {
	t.Helper()
	doc, err := fleet.BuildSyLink(&fleet.Settings{Blocks: []fleet.PriorityBlock{{Name: "Priority1", Servers: []fleet.Server{{
		Address: "localhost", HTTPSPort: l.port, HTTPPort: l.plainPort, VerifySignatures: true, Cert: l.current.Cert,
	}}}}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.New(fleet.Config{
		Count: n, SyLink: doc, TLSMax: fleet.TLS12, PlaintextShare: 0.2,
		Interval: fleetInterval, Randomize: fleetRandomize, LogBytes: 512, Timeout: 5 * time.Second, Seed: 9,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestRotationPage loads the rotation page in headless Chromium while a
// fleet runs through a rotation window, and checks what an operator sees:
// the window open, the confirmed count rising from one refresh to the
// next, the percent, a plaintext client and a kept TLS 1.0 client listed,
// and a client id carrying markup shown as text, not run.
//
// LEGACYGATE_SCREENSHOT=<file> saves a screenshot of the page mid-rotation
// (docs/images/rotation-page.png is made so).
func TestRotationPage(t *testing.T) {
	browser := startChromium(t)
	now := time.Now()
	l := newWindowLab(t, now.Add(-time.Hour), now.Add(time.Hour), "1h")
	keepFile := filepath.Join(t.TempDir(), "tls10-clients.txt")
	if err := os.WriteFile(keepFile, []byte("# agents that speak TLS 1.0 only\nXP-LAB-01\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dashPort := harness.FreePort(t)
	l.gw = harness.StartGateway(t, pageCaddyfile(l, dashPort, keepFile))
	l.gw.WaitCertificate(t, "localhost")
	t.Logf("gateway serving after %s", time.Since(now).Round(time.Millisecond))

	// A kept client and a hostile one heartbeat once over plain HTTP.
	plain := &http.Client{Timeout: 5 * time.Second}
	for _, id := range []string{"XP-LAB-01", hostileClientID} {
		resp, err := plain.Get(fmt.Sprintf("http://localhost:%d/secars/secars.dll?action=index&hostid=%s", l.plainPort, url.QueryEscape(id)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}

	ctx, cancel := context.WithTimeout(browser, 50*time.Second)
	defer cancel()
	page := fmt.Sprintf("http://127.0.0.1:%d/", dashPort)
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 1000), chromedp.Navigate(page)); err != nil {
		t.Fatalf("loading %s: %v", page, err)
	}
	read := func() pageView {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[pageView](readPage))
		if err != nil {
			t.Fatalf("reading the page: %v", err)
		}
		return v
	}
	// waitPage reads the page until ok holds, at most within.
	waitPage := func(what string, within time.Duration, ok func(pageView) bool) pageView {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			v := read()
			if ok(v) {
				return v
			}
			if time.Now().After(deadline) {
				t.Fatalf("the page did not show %s within %s: %+v", what, within, v)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	first := waitPage("its first figures", 10*time.Second, func(v pageView) bool { return v.Updates >= 1 })
	if first.Phase != "open" || !strings.Contains(first.Left, "until grace") {
		t.Errorf("window shown as %q, %q; want open, time left until grace", first.Phase, first.Left)
	}

	t.Logf("page loaded after %s", time.Since(now).Round(time.Millisecond))
	n := min(fleetClients(), pageFleetClients)
	run := runFleet(t, pageFleet(t, l, n))
	rising := waitPage("confirmed clients", 30*time.Second, func(v pageView) bool { return v.confirmedCount(t) > 0 })
	later := waitPage("the confirmed count rising", 30*time.Second, func(v pageView) bool {
		return v.Updates > rising.Updates && v.confirmedCount(t) > rising.confirmedCount(t)
	})
	t.Logf("confirmed on the page: %s (%s) at update %d, then %s (%s) at update %d",
		rising.Confirmed, rising.Percent, rising.Updates, later.Confirmed, later.Percent, later.Updates)
	if file := os.Getenv("LEGACYGATE_SCREENSHOT"); file != "" {
		shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot written to %s", file)
	}
	// Every fleet client, plus the kept and the hostile client (pending).
	tracked := strconv.Itoa(n + 2)
	if n+2 >= 1000 {
		tracked = fmt.Sprintf("%d,%03d", (n+2)/1000, (n+2)%1000)
	}
	done := waitPage("every client tracked", 30*time.Second, func(v pageView) bool { return v.Tracked == tracked })
	run.stop()
	t.Logf("page read after %s: %+v", time.Since(now).Round(time.Millisecond), done)
	if want := fmt.Sprintf("%.1f %%", 100*float64(done.confirmedCount(t))/float64(n+2)); done.Percent != want {
		t.Errorf("percent %q with %s of %s confirmed, want %q", done.Percent, done.Confirmed, done.Tracked, want)
	}
	if !regexp.MustCompile(`XP-LAB-01\s+pending\s+.*needs agent upgrade`).MatchString(done.Plaintext) {
		t.Errorf("the plaintext section does not list XP-LAB-01 as needing an agent upgrade:\n%s", done.Plaintext)
	}
	shown := strings.ToUpper(hostileClientID) // client ids are upper-cased
	if !strings.Contains(done.Plaintext, shown) || !strings.Contains(done.Stragglers, shown) {
		t.Errorf("the hostile client id %q is not shown as text:\nplaintext:\n%s\nstragglers:\n%s", shown, done.Plaintext, done.Stragglers)
	}
	if done.Pwned || done.Scripts != 1 || done.Images != 0 {
		t.Errorf("a client id became markup: pwned %v, %d scripts, %d images", done.Pwned, done.Scripts, done.Images)
	}
	if !strings.HasPrefix(done.Status, "updated ") {
		t.Errorf("status line %q, want the last update's time", done.Status)
	}
}
