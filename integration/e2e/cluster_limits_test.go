package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
	"github.com/legacygate/legacygate/integration/redislab"
)

// clusterGateways starts three gateways sharing one Redis in front of m,
// each limiting heartbeats per client (1/60s, burst 3) and, with
// globalRate, to globalRate for the cluster. It returns the gateways and
// their ports once each counts three live members and the warm-up of a
// new member (1.5 intervals) is over.
func clusterGateways(t *testing.T, redisAddr string, m *heartbeatManager, globalRate string) ([3]*harness.Gateway, [3]int) {
	t.Helper()
	const interval = 400 * time.Millisecond
	global := ""
	if globalRate != "" {
		global = "global_rate " + globalRate + "\n\t\tmax_wait 500ms"
	}
	var gs [3]*harness.Gateway
	var ports [3]int
	var wg sync.WaitGroup
	for i := range gs {
		ports[i] = harness.FreePort(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			gs[i] = harness.StartGateway(t, fmt.Sprintf(`
http://127.0.0.1:%d {
	heartbeat_limit /secars/secars.dll {
		key {query.hostid}
		rate 1/60s
		burst 3
		%s
		cluster redis {
			address %s
			interval %s
		}
	}
	reverse_proxy %s {
		header_up X-Sent-Ms {time.now.unix_ms}
	}
}
`, ports[i], global, redisAddr, interval, m.URL))
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, g := range gs {
		for heartbeatMetrics(t, g)[`legacygate_heartbeat_limit_cluster_members{zone="default"}`] != 3 {
			if time.Now().After(deadline) {
				t.Fatalf("the gateways did not all see three members within 15 s: %v", heartbeatMetrics(t, g))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	time.Sleep(interval * 3 / 2)
	return gs, ports
}

func TestClusterBurstSpentOnOneGatewayIsRefusedOnTheOthers(t *testing.T) {
	s := redislab.Start(t, redislab.Options{})
	m := startHeartbeatManager(t)
	_, ports := clusterGateways(t, s.Addr, m, "")
	client := &http.Client{Timeout: 10 * time.Second}
	at := func(i int, id string) string {
		return fmt.Sprintf("http://127.0.0.1:%d/secars/secars.dll?action=index&hostid=%s", ports[i], id)
	}
	for i := range 3 {
		if status, _ := heartbeatDo(t, client, "GET", at(0, "C0FFEE"), "", nil); status != 200 {
			t.Fatalf("request %d at gateway A: %d", i, status)
		}
	}
	spent := time.Now()
	// Within one interval (400ms) every gateway knows; check just after.
	time.Sleep(500 * time.Millisecond)
	for i := 1; i < 3; i++ {
		// Another case of the same host id is the same client.
		status, retry := heartbeatDo(t, client, "GET", at(i, "c0ffee"), "", nil)
		if status != http.StatusTooManyRequests || retry == "" {
			t.Fatalf("gateway %c, %v after the burst was spent at A: %d (Retry-After %q), want 429",
				'A'+i, time.Since(spent).Round(time.Millisecond), status, retry)
		}
		if status, _ := heartbeatDo(t, client, "GET", at(i, fmt.Sprintf("BEEF%d", i)), "", nil); status != 200 {
			t.Fatalf("another client at gateway %c: %d, want 200", 'A'+i, status)
		}
	}
	if arrivals, _ := m.received(); len(arrivals) != 5 {
		t.Fatalf("the manager saw %d requests, want 5 (3 + one other client per other gateway)", len(arrivals))
	}
}

// TestClusterCeilingHoldsAcrossThreeGatewaysAndARedisRestart sends 24
// concurrent clients, each request from a fresh host id, through three
// gateways round robin for 3 s, with Redis down for the middle second and
// restarted empty, as after a crash. global_rate 40/1s is the cluster's: each gateway admits
// 40/3 per second, so the manager sees at most 40 × 3 s plus one slot per
// gateway and some scheduling slack, not three times that; and no request
// fails because Redis went away.
func TestClusterCeilingHoldsAcrossThreeGatewaysAndARedisRestart(t *testing.T) {
	const rate, run, workers = 40, 3 * time.Second, 24
	s := redislab.Start(t, redislab.Options{})
	m := startHeartbeatManager(t)
	gs, ports := clusterGateways(t, s.Addr, m, fmt.Sprintf("%d/1s", rate))

	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var next, ok, limited, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				n := next.Add(1)
				url := fmt.Sprintf("http://127.0.0.1:%d/secars/secars.dll?action=index&hostid=F%06d", ports[n%3], n)
				resp, err := client.Get(url)
				if err != nil {
					failed.Add(1)
					t.Errorf("request %d: %v", n, err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusOK:
					ok.Add(1)
				case http.StatusTooManyRequests:
					limited.Add(1)
				default:
					failed.Add(1)
					t.Errorf("request %d: status %d", n, resp.StatusCode)
				}
			}
		}()
	}
	time.Sleep(run / 3)
	s.Stop()
	stopped := time.Since(start)
	time.Sleep(run / 3)
	s.Restart(t)
	restarted := time.Since(start)
	wg.Wait()
	elapsed := time.Since(start)
	arrivals, _ := m.received()
	t.Logf("%d requests in %v (Redis down from %v to %v): %d reached the manager, %d limited",
		next.Load(), elapsed.Round(time.Millisecond), stopped.Round(time.Millisecond), restarted.Round(time.Millisecond), ok.Load(), limited.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed", failed.Load())
	}
	if int64(len(arrivals)) != ok.Load() {
		t.Fatalf("the manager saw %d requests, clients got %d OKs", len(arrivals), ok.Load())
	}
	// elapsed includes the slots reserved (up to max_wait) by the last
	// requests; each gateway may admit one at the start of its schedule.
	ceiling := int(float64(rate)*elapsed.Seconds()) + 3 + 8
	if len(arrivals) > ceiling {
		t.Fatalf("the manager saw %d requests in %v, the cluster's ceiling allows about %d (per-gateway ceilings would allow %d)",
			len(arrivals), elapsed.Round(time.Millisecond), ceiling, 3*rate*int(run/time.Second))
	}
	if worst := heartbeatBusiestSecond(arrivals); worst > rate+3+5 {
		t.Fatalf("the manager saw %d requests in one second, cluster ceiling %d/s", worst, rate)
	}
	if limited.Load() == 0 {
		t.Fatal("nothing was limited: the load did not exceed the ceiling")
	}
	// Each gateway noticed the outage, said so once, and once that Redis
	// was back, within an interval or two of the restart.
	time.Sleep(time.Second)
	for i, g := range gs {
		if f := heartbeatMetrics(t, g)[`legacygate_heartbeat_limit_cluster_sync_failures_total{zone="default"}`]; f < 1 {
			t.Errorf("gateway %c counted %v failed exchanges during a %v outage", 'A'+i, f, run/3)
		}
		logs := g.Logs()
		if strings.Contains(logs, "connection pool") {
			t.Errorf("gateway %c let go-redis log each failed dial:\n%s", 'A'+i, logs)
		}
		if n := strings.Count(logs, "Redis unreachable"); n != 1 {
			t.Errorf("gateway %c logged the outage %d times, want once", 'A'+i, n)
		}
		if n := strings.Count(logs, "Redis reachable again"); n != 1 {
			t.Errorf("gateway %c logged the recovery %d times, want once", 'A'+i, n)
		}
	}
}

func TestClusterExampleAdaptsOnACleanMachine(t *testing.T) {
	for _, name := range []string{"LEGACYGATE_SITE", "LEGACYGATE_LB", "LEGACYGATE_REDIS", "SEPM_MANAGER", "SEPM_PIN", "SEPM_CERT"} {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
	stdout, stderr, err := harness.Run(t, "adapt", "--config", flavorExample(t, "cluster"))
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, stderr)
	}
	if strings.Contains(stderr, `"level":"warn"`) {
		t.Errorf("adapt warned:\n%s", stderr)
	}
	for _, want := range []string{
		`"cluster":{"address":"10.0.0.9:6379","instance_ttl":3000000000,"interval":1000000000,"key_prefix":"legacygate","password":"{env.REDIS_PASSWORD}"}`,
		`"global_rate":"200/1s"`, `"wrapper":"proxy_protocol"`, `"allow":["10.0.0.2/32"]`,
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, stdout)
		}
	}
}

func TestClusterHAProxyExampleIsValid(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/haproxy")
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("haproxy is not installed (apt-get install -y haproxy)")
		}
		t.Skip("haproxy is not installed")
	}
	cfg := filepath.Join(filepath.Dir(flavorExample(t, "cluster")), "haproxy-cluster.cfg")
	out, err := exec.Command(bin, "-c", "-f", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c -f %s: %v\n%s", cfg, err, out)
	}
	if !strings.Contains(mustRead(t, cfg), "send-proxy-v2") {
		t.Fatal("the example does not send the PROXY protocol the example Caddyfile expects")
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
