package bench

import (
	"crypto/tls"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
)

const wrkSample = `Running 2s test @ https://127.0.0.1:40000/secars/secars.dll?action=index&hostid=AB
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.06ms   12.55ms 146.44ms   94.49%
    Req/Sec     2.18k   392.14     2.87k    72.50%
  Latency Distribution
     50%    4.46ms
     75%    6.02ms
     90%    9.25ms
     99%   59.03ms
  8661 requests in 2.00s, 4.39MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:   4330.15
Transfer/sec:      2.19MB
`

func TestParseWrkReadsTotalsLatenciesAndErrors(t *testing.T) {
	got, err := parseWrk(wrkSample)
	if err != nil {
		t.Fatal(err)
	}
	want := loadResult{Requests: 8661 - 10, Errors: 10, Elapsed: 2 * time.Second, P50: 4460 * time.Microsecond, P99: 59030 * time.Microsecond}
	if got != want {
		t.Errorf("parseWrk = %+v, want %+v", got, want)
	}
}

func TestParseWrkRefusesOutputWithoutFigures(t *testing.T) {
	for _, out := range []string{"", "unable to connect to 127.0.0.1:1 Connection refused", "10 requests in 1.00s, 1KB read\n"} {
		if _, err := parseWrk(out); err == nil {
			t.Errorf("parseWrk(%q) accepted output without figures", out)
		}
	}
}

func TestSoakJudgesFlatAfterWarmup(t *testing.T) {
	series := func(rss ...float64) []SoakSample {
		out := make([]SoakSample, len(rss))
		for i, r := range rss {
			out[i] = SoakSample{Seconds: float64(i+1) * 10, RSSMB: r}
		}
		return out
	}
	cfg := SoakConfig{Duration: 100 * time.Second, Warmup: 30 * time.Second}
	tests := []struct {
		name string
		rss  []float64
		flat bool
	}{
		{"grows in warm-up then flat", []float64{50, 80, 100, 101, 99, 104, 100, 102, 103, 105}, true},
		{"keeps growing", []float64{50, 80, 100, 105, 110, 115, 120, 125, 130, 135}, false},
		{"one spike above 1.1x", []float64{50, 80, 100, 100, 100, 100, 100, 112, 100, 100}, false},
		{"no samples", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &SoakReport{Samples: series(tt.rss...)}
			r.judge(cfg)
			if r.Flat != tt.flat {
				t.Errorf("flat = %v (warm-up peak %.0f, last half peak %.0f), want %v", r.Flat, r.WarmupPeakMB, r.LastHalfPeakMB, tt.flat)
			}
		})
	}
}

func TestWritePlotWritesAPNG(t *testing.T) {
	file := filepath.Join(t.TempDir(), "soak.png")
	samples := []SoakSample{{Seconds: 5, RSSMB: 80, RPS: 500}, {Seconds: 10, RSSMB: 120, RPS: 900}, {Seconds: 15, RSSMB: 121, RPS: 850}}
	if err := writePlot(file, samples, 7); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != plotW || b.Dy() != plotH {
		t.Errorf("plot is %v, want %dx%d", b, plotW, plotH)
	}
}

func TestProcTreeReadsThisProcess(t *testing.T) {
	p := procTree{pid: os.Getpid()}
	cpu, err := p.cpuSeconds()
	if err != nil || cpu < 0 {
		t.Fatalf("cpuSeconds = %v, %v", cpu, err)
	}
	peak, err := p.peakRSS()
	if err != nil || peak <= 0 {
		t.Fatalf("peakRSS = %v, %v", peak, err)
	}
	rss, err := p.rss()
	if err != nil || rss <= 0 {
		t.Fatalf("rss = %v, %v", rss, err)
	}
}

// haproxyBin is the installed haproxy; the test skips without it outside CI
// and fails under CI=true.
func haproxyBin(t *testing.T) string {
	t.Helper()
	bin, err := lookPath("haproxy")
	if err == nil {
		return bin
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("haproxy is not installed; CI must install it (apt-get install -y haproxy): %v", err)
	}
	t.Skipf("haproxy is not installed: %v", err)
	return ""
}

func TestHAProxyBaselineVerifiesTheManagerCertificate(t *testing.T) {
	bin := haproxyBin(t)
	m, err := startManager(tls.VersionTLS12, tls.VersionTLS12, certs.Modern, manager.SignRSASHA256, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	dir := t.TempDir()
	fr, err := newFront(dir)
	if err != nil {
		t.Fatal(err)
	}
	managerCert, err := writeFile(dir, "manager.crt", m.Pair().CertPEM())
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := certs.New(certs.Modern, managerName, 2048)
	if err != nil {
		t.Fatal(err)
	}
	strangerCert, err := writeFile(dir, "stranger.crt", stranger.CertPEM())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		trust      string
		serverName string
		want       int
	}{
		{"manager trusted under its name", managerCert, managerName, http.StatusOK},
		{"another certificate trusted", strangerCert, managerName, http.StatusServiceUnavailable},
		{"manager trusted under another name", managerCert, "other.legacygate.test", http.StatusServiceUnavailable},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port, err := freePort()
			if err != nil {
				t.Fatal(err)
			}
			p, err := launchHAProxy(bin, filepath.Join(dir, fmt.Sprint(i)), "", m.Addrs().HTTPS, port, fr, tt.trust, tt.serverName)
			if err != nil {
				t.Fatal(err)
			}
			defer p.stop()
			code := firstStatus(t, p, fmt.Sprintf("https://127.0.0.1:%d%s", port, helloPath))
			if code != tt.want {
				t.Errorf("status %d, want %d", code, tt.want)
			}
			if n := len(p.tree().pids()); n < 2 {
				t.Errorf("HAProxy's process tree has %d processes, want its master and a worker", n)
			}
		})
	}
}

// firstStatus is the status of the first answer url gives once p listens.
func firstStatus(t *testing.T, p *process, url string) int {
	t.Helper()
	client := insecureClient(1, false)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.StatusCode
		}
		select {
		case <-p.done:
			t.Fatalf("haproxy exited: %v\n%s", p.err, p.logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer from %s: %v\n%s", url, err, p.logs.String())
		}
	}
}
