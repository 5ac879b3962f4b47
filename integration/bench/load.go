package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// loadResult is one load run against one URL.
type loadResult struct {
	Requests int64         // answered 2xx
	Errors   int64         // transport errors and non-2xx answers
	Elapsed  time.Duration // how long the load ran
	P50, P99 time.Duration
}

func (r loadResult) rps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// generator drives load at a URL for a duration.
type generator interface {
	name() string
	run(ctx context.Context, url string, conns int, d time.Duration) (loadResult, error)
}

// goLoad is the Go load generator: conns workers, each sending requests one
// after another, keep-alive or (newConnEach) a new TCP+TLS connection with a
// full handshake per request.
type goLoad struct{ newConnEach bool }

func (g goLoad) name() string {
	if g.newConnEach {
		return "go (new TLS connection per request)"
	}
	return "go (keep-alive)"
}

func (g goLoad) run(ctx context.Context, url string, conns int, d time.Duration) (loadResult, error) {
	client := insecureClient(conns, g.newConnEach)
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu        sync.Mutex
		latencies []time.Duration
		res       loadResult
		wg        sync.WaitGroup
	)
	start := time.Now()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			var ok, failed int64
			for ctx.Err() == nil {
				t0 := time.Now()
				good := fetch(ctx, client, url)
				if ctx.Err() != nil {
					break // cut by the end of the run: not counted
				}
				if good {
					ok++
					mine = append(mine, time.Since(t0))
				} else {
					failed++
				}
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			res.Requests += ok
			res.Errors += failed
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.P50, res.P99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
	return res, nil
}

// fetch sends one GET and reads the whole answer; it reports a 2xx.
func fetch(ctx context.Context, c *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", "Smc")
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err == nil && resp.StatusCode/100 == 2
}

func percentile(xs []time.Duration, q float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	// Nearest rank: the smallest value with at least q of the samples at or below it.
	rank := int(math.Ceil(q * float64(len(xs))))
	return xs[max(0, min(len(xs), rank)-1)]
}

// wrkLoad runs wrk (keep-alive HTTPS) and parses its report.
type wrkLoad struct{ bin string }

func (w wrkLoad) name() string { return "wrk (keep-alive)" }

func (w wrkLoad) run(ctx context.Context, url string, conns int, d time.Duration) (loadResult, error) {
	threads := min(conns, 2)
	secs := max(1, int(d.Round(time.Second)/time.Second))
	cmd := exec.CommandContext(ctx, w.bin, "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-d", strconv.Itoa(secs)+"s", "--latency", "-H", "User-Agent: Smc", url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return loadResult{}, fmt.Errorf("wrk %s: %w\n%s", url, err, out)
	}
	return parseWrk(string(out))
}

var (
	wrkTotal   = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(us|ms|s|m)`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSocket  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkPercent = regexp.MustCompile(`^\s*(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s|m)\s*$`)
)

// parseWrk reads the figures of wrk's --latency report.
func parseWrk(out string) (loadResult, error) {
	var res loadResult
	m := wrkTotal.FindStringSubmatch(out)
	if m == nil {
		return res, fmt.Errorf("wrk output without a total line:\n%s", out)
	}
	total, _ := strconv.ParseInt(m[1], 10, 64)
	elapsed, err := wrkDuration(m[2], m[3])
	if err != nil {
		return res, err
	}
	res.Elapsed = elapsed
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		res.Errors += n
	}
	if m := wrkSocket.FindStringSubmatch(out); m != nil {
		for _, f := range m[1:] {
			n, _ := strconv.ParseInt(f, 10, 64)
			res.Errors += n
		}
	}
	res.Requests = max(0, total-res.Errors)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := wrkPercent.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		d, err := wrkDuration(m[2], m[3])
		if err != nil {
			return res, err
		}
		if m[1] == "50" {
			res.P50 = d
		} else {
			res.P99 = d
		}
	}
	if res.P50 == 0 || res.P99 == 0 {
		return res, fmt.Errorf("wrk output without 50%%/99%% latencies:\n%s", out)
	}
	return res, nil
}

func wrkDuration(value, unit string) (time.Duration, error) {
	v, err := strconv.ParseFloat(value, 64)
	if err != nil {
		return 0, fmt.Errorf("wrk duration %q: %w", value+unit, err)
	}
	scale := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute}[unit]
	return time.Duration(v * float64(scale)), nil
}
