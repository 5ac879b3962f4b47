package bench

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"
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
