package e2e

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/beevik/etree"
	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/legacygate/legacygate/caddymodule/redisstorage"
	"github.com/legacygate/legacygate/integration/harness"
	"github.com/legacygate/legacygate/integration/redislab"
	"github.com/legacygate/legacygate/internal/rotationtable"
	"github.com/legacygate/legacygate/policyguard"
)

// clusterLab is one SEPM emulator and one redis-server behind which
// gateways share rotation progress and a generated next key through
// `storage redis` in the legacygate app.
type clusterLab struct {
	*rotationLab // the manager, the current key, files
	redis        *redislab.Server
	rdb          *redis.Client
	persist      time.Duration
	start, end   time.Time
	maxClients   int
}

const (
	clusterPrefix  = "lgcluster"
	clusterNextKey = "cluster-next"
)

func newClusterLab(t *testing.T, persist time.Duration) *clusterLab {
	t.Helper()
	r := redislab.Start(t, redislab.Options{})
	now := time.Now().Truncate(time.Second) // the Caddyfile's RFC 3339 times are whole seconds
	l := &clusterLab{
		rotationLab: newRotationLab(t),
		redis:       r,
		rdb:         redis.NewClient(&redis.Options{Addr: r.Addr}),
		persist:     persist,
		start:       now.Add(-time.Hour),
		end:         now.Add(time.Hour),
	}
	t.Cleanup(func() { _ = l.rdb.Close() })
	return l
}

// caddyfile is one gateway's configuration: the current key from files,
// the next one generated once for the cluster, both kept in Redis.
func (l *clusterLab) caddyfile(t *testing.T, httpsPort int) string {
	t.Helper()
	curCert, curKey, err := l.current.WriteFiles(l.dir, "current")
	if err != nil {
		t.Fatal(err)
	}
	mgrCert, _, err := l.mgr.Pair().WriteFiles(l.dir, "manager")
	if err != nil {
		t.Fatal(err)
	}
	maxClients := ""
	if l.maxClients > 0 {
		maxClients = "max_clients " + strconv.Itoa(l.maxClients)
	}
	return fmt.Sprintf(`{
	grace_period 1s
	legacygate {
		signing_key current %s %s
		signing_key next generate %s
		client_id {query.hostid}
		storage redis {
			address %s
			key_prefix %s
			timeout 2
			lock_ttl 3s
		}
		rotation {
			window %s %s
			confirm_heartbeats 3
			grace 1h
			persist_interval %s
			%s
		}
	}
}

localhost:%d {
	tls internal
	policy_guard /secars/secars.dll {
		upstream_cert %s
		roots Profile ServerSettings
		rewrite {
			roots ServerSettings
			addresses localhost
			https_port %d
		}
	}
	reverse_proxy http://%s
}
`, curKey, curCert, clusterNextKey, l.redis.Addr, clusterPrefix,
		l.start.UTC().Format(time.RFC3339), l.end.UTC().Format(time.RFC3339), l.persist, maxClients,
		httpsPort, mgrCert, httpsPort, l.mgr.Addrs().HTTP)
}

// startNodes starts n gateways at the same time and returns them as labs
// sharing the manager.
func (l *clusterLab) startNodes(t *testing.T, n int) []*rotationLab {
	t.Helper()
	harness.Binary(t) // build once, before the race
	nodes := make([]*rotationLab, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range nodes {
		port := harness.FreePort(t)
		file := l.caddyfile(t, port)
		wg.Go(func() {
			gw, err := harness.TryStartGateway(t, file)
			errs[i] = err
			nodes[i] = &rotationLab{dir: l.dir, mgr: l.mgr, gw: gw, current: l.current,
				httpsPort: port, https: "https://localhost:" + strconv.Itoa(port)}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("gateway %d: %v", i, err)
		}
		nodes[i].gw.WaitCertificate(t, "localhost")
	}
	return nodes
}

// nextCert is the generated next certificate as Redis holds it.
func (l *clusterLab) nextCert(t *testing.T) *x509.Certificate {
	t.Helper()
	data, err := l.rdb.HGet(t.Context(), clusterPrefix+"/legacygate/keys/"+clusterNextKey+".crt", "value").Bytes()
	if err != nil {
		t.Fatalf("the generated next certificate in Redis: %v", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("the generated next certificate in Redis is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// embeddedCert is the certificate a rewritten settings document carries.
func embeddedCert(t *testing.T, settings []byte) string {
	t.Helper()
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(settings); err != nil {
		t.Fatal(err)
	}
	el := doc.FindElement("//Server/ServerCertificate")
	if el == nil {
		t.Fatalf("no ServerCertificate in the settings:\n%s", settings)
	}
	return strings.Join(strings.Fields(el.Text()), "")
}

// confirmedCount is the confirmed clients the node's admin API reports.
func confirmedCount(t *testing.T, n *rotationLab) int {
	t.Helper()
	counts, _ := n.status(t)["counts"].(map[string]any)
	c, _ := counts["confirmed"].(float64)
	return int(c)
}

// waitConfirmed waits until node reports at least want confirmed clients.
func waitConfirmed(t *testing.T, n *rotationLab, want int, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got := confirmedCount(t, n)
		if got >= want {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("%s reports %d confirmed clients after %s, want %d", n.https, got, limit, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killGateway ends the gateway with SIGKILL: no final save, as in a crash.
// The process is found by its command line, which names its own Caddyfile.
func killGateway(t *testing.T, gw *harness.Gateway) {
	t.Helper()
	want := filepath.Join(gw.Dir, "Caddyfile")
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(cmdline), want) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("SIGKILL %d: %v", pid, err)
		}
		waitAdminGone(t, gw.AdminAddr)
		return
	}
	t.Fatalf("no process runs %s", want)
}

// confirmMany registers n clients and confirms each through node, eight at
// a time.
func confirmMany(t *testing.T, node *rotationLab, n int) []string {
	t.Helper()
	hosts := make([]string, n)
	for i := range hosts {
		hosts[i] = node.register(t)
	}
	c := node.gw.Client(t)
	var wg sync.WaitGroup
	work := make(chan string)
	for range 8 {
		wg.Go(func() {
			for h := range work {
				if err := confirmClient(c, node, h); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for _, h := range hosts {
		work <- h
	}
	close(work)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return hosts
}

// fetch is one request that reports failure instead of failing the test,
// for background goroutines.
func fetch(c *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("User-Agent", "Smc")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// confirmClient fetches the settings and sends three heartbeats.
func confirmClient(c *http.Client, node *rotationLab, host string) error {
	for i, action := range []string{"sylink", "index", "index", "index"} {
		status, body, err := fetch(c, node.https+"/secars/secars.dll?action="+action+"&hostid="+host)
		if err != nil || status != http.StatusOK {
			return fmt.Errorf("%s request %d (%s) for %s: %d %v %.200s", node.https, i, action, host, status, err, body)
		}
	}
	return nil
}

func TestClusterRotationOnRedisThreeGatewaysShareProgressSurviveAKillAndARedisRestart(t *testing.T) {
	persist := 300 * time.Millisecond
	began := time.Now()
	phase := func(name string) { t.Logf("%6.1fs %s", time.Since(began).Seconds(), name) }
	l := newClusterLab(t, persist)
	harness.Binary(t)
	phase("built")
	nodes := l.startNodes(t, 3)
	phase("three started")
	a, b, c := nodes[0], nodes[1], nodes[2]

	// Three gateways started at once generated one next key, under the
	// Redis lock: each embeds the certificate Redis holds.
	next := l.nextCert(t)
	wantEmbedded := base64.StdEncoding.EncodeToString(next.Raw)
	first := a.register(t)
	for i, n := range nodes {
		r := n.get(t, n.gw.Client(t), n.https, "sylink", first)
		if r.status != http.StatusOK {
			t.Fatalf("settings through gateway %d: %d %s", i, r.status, r.body)
		}
		if embeddedCert(t, r.body) != wantEmbedded {
			t.Fatalf("gateway %d embeds another next certificate than the one generated for the cluster", i)
		}
	}

	// A client confirmed through A is signed with next through B within
	// a persist interval or two (A saves at its tick, B reads at its).
	host := a.register(t)
	if err := confirmClient(a.gw.Client(t), a, host); err != nil {
		t.Fatal(err)
	}
	confirmedAt := time.Now()
	bc := b.gw.Client(t)
	for {
		p := b.get(t, bc, b.https, "profile", host)
		if verifies(t, next, p.body) {
			break
		}
		held := p.status == http.StatusServiceUnavailable && p.header.Get("Retry-After") != ""
		if !held && !verifies(t, l.current.Cert, p.body) {
			t.Fatalf("through B: status %d, neither a hold nor signed with the current key", p.status)
		}
		if time.Since(confirmedAt) > 2*persist+2*time.Second {
			t.Fatalf("through B: the client confirmed through A is not signed with next after %s (persist_interval %s)", time.Since(confirmedAt), persist)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("confirmed through A, signed with next through B after %s (persist_interval %s)", time.Since(confirmedAt), persist)

	// 100 clients confirmed through A, A saves, A is killed: B and C
	// report them confirmed.
	phase("one confirmed")
	hosts := confirmMany(t, a, 100)
	phase("100 confirmed")
	want := confirmedCount(t, a)
	if want < 101 {
		t.Fatalf("A reports %d confirmed, want at least 101", want)
	}
	time.Sleep(2 * persist) // A's next save has run
	killGateway(t, a.gw)
	phase("A killed")
	for _, n := range []*rotationLab{b, c} {
		waitConfirmed(t, n, want, 2*persist+5*time.Second)
		for _, h := range hosts[:5] {
			if p := n.get(t, n.gw.Client(t), n.https, "profile", h); !verifies(t, next, p.body) {
				t.Fatalf("through %s after A's SIGKILL: status %d, a client confirmed through A is not signed with next", n.https, p.status)
			}
		}
	}

	// Redis goes away and comes back empty while clients keep coming:
	// no request fails, and B and C write back everything they hold.
	phase("B and C agree")
	var stop atomic.Bool
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for i, n := range []*rotationLab{b, c} {
		cl := n.gw.Client(t)
		wg.Go(func() {
			for j := 0; !stop.Load(); j++ {
				h := hosts[(j*2+i)%len(hosts)]
				action := []string{"index", "profile"}[j%2]
				status, body, err := fetch(cl, n.https+"/secars/secars.dll?action="+action+"&hostid="+h)
				sent.Add(1)
				bad := err != nil || status != http.StatusOK
				if !bad && action == "profile" {
					bad = !verifiesQuietly(next, body)
				}
				if bad {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%s %s %s: %d %v", n.https, action, h, status, err))
				}
			}
		})
	}
	time.Sleep(2 * persist)
	// A key no gateway writes: its absence after the restart shows Redis
	// came back empty, even if the gateways have already written again.
	const sentinel = "legacygate-test:before-restart"
	if err := l.rdb.Set(t.Context(), sentinel, "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	l.redis.Stop()
	time.Sleep(3 * persist) // syncs fail meanwhile; requests must not
	l.redis.Restart(t)
	if n := l.rdb.Exists(t.Context(), sentinel).Val(); n != 0 {
		t.Fatal("Redis came back with the data it held before the restart, want empty")
	}
	time.Sleep(4 * persist)
	stop.Store(true)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across the Redis restart; first: %v", failed.Load(), sent.Load(), firstErr.Load())
	}
	if sent.Load() < 20 {
		t.Fatalf("only %d requests were sent across the Redis restart", sent.Load())
	}
	// The outage is counted, by operation and result only.
	for _, sample := range []string{
		`legacygate_redis_storage_operations_total{operation="store",result="ok"}`,
		`legacygate_redis_storage_operations_total{operation="lock",result="error"}`,
	} {
		if v, err := strconv.ParseFloat(guardMetric(t, b.gw, sample), 64); err != nil || v < 1 {
			t.Errorf("B's %s = %v (%v), want at least 1", sample, v, err)
		}
	}
	if got := l.nextCert(t); !got.Equal(next) {
		t.Fatal("after the Redis restart, Redis holds another next key than the cluster signs with")
	}
	phase("Redis restarted")
	// A gateway started now learns everything from Redis alone.
	d := l.startNodes(t, 1)[0]
	waitConfirmed(t, d, want, 2*persist+5*time.Second)
	if p := d.get(t, d.gw.Client(t), d.https, "profile", hosts[len(hosts)-1]); !verifies(t, next, p.body) {
		t.Fatalf("a gateway started after the Redis restart: status %d, a confirmed client is not signed with the cluster's next key", p.status)
	}
	t.Logf("%d requests through B and C across the Redis restart, none failed", sent.Load())
}

// verifiesQuietly is verifies for background goroutines.
func verifiesQuietly(cert *x509.Certificate, doc []byte) bool {
	v, err := policyguard.NewVerifier([]*x509.Certificate{cert}, policyguard.VerifyOptions{})
	if err != nil {
		return false
	}
	_, err = v.Verify(doc)
	return err == nil
}

// TestClusterRotationRedisTrafficFor100kClients measures what rotation
// progress costs Redis per gateway: three gateways holding 100,000
// confirmed clients each sync every persist_interval; Redis's command and
// byte counters over the run, divided by gateways and seconds. Long: run
// with LEGACYGATE_LONG=1.
func TestClusterRotationRedisTrafficFor100kClients(t *testing.T) {
	if os.Getenv("LEGACYGATE_LONG") != "1" {
		t.Skip("LEGACYGATE_LONG=1 runs the 100,000-client measurement")
	}
	const clients, gateways = 100_000, 3
	persist := time.Second
	l := newClusterLab(t, persist)
	l.maxClients = 200_000
	seedProgress(t, l, clients)
	nodes := l.startNodes(t, gateways)
	for _, n := range nodes {
		if confirmedCount(t, n) < clients {
			time.Sleep(3 * persist)
		}
		if got := confirmedCount(t, n); got < clients {
			t.Fatalf("%s reports %d confirmed clients, want %d\n%s", n.https, got, clients, n.gw.Logs())
		}
	}
	// Steady state: only the gateways' own files remain.
	if err := l.rdb.Del(t.Context(), clusterPrefix+"/"+l.progressDir()+"/seed.lgrt").Err(); err != nil {
		t.Fatal(err)
	}
	l.rdb.SRem(t.Context(), clusterPrefix+":index:"+l.progressDir(), "seed.lgrt")
	time.Sleep(2 * persist)
	before := redisCounters(t, l.rdb)
	const run = 10 * time.Second
	time.Sleep(run)
	after := redisCounters(t, l.rdb)
	per := func(k string) float64 { return float64(after[k]-before[k]) / run.Seconds() / gateways }
	syncs := per("cmd:hset") // each sync saves one file
	if syncs == 0 {
		t.Fatal("no gateway saved its progress during the run")
	}
	t.Logf("per gateway, persist_interval %s, %d clients, %d gateways: %.2f syncs/s; %.1f commands/s, %.0f bytes/s into Redis, %.0f bytes/s out of Redis",
		persist, clients, gateways, syncs, per("calls"), per("in"), per("out"))
	t.Logf("per sync: %.1f commands, %.0f bytes into Redis, %.0f bytes out of Redis",
		per("calls")/syncs, per("in")/syncs, per("out")/syncs)
	for k := range after {
		if strings.HasPrefix(k, "cmd:") && after[k] > before[k] {
			t.Logf("  %s: %.2f/s per gateway", strings.TrimPrefix(k, "cmd:"), per(k))
		}
	}
	files, _ := l.rdb.SMembers(t.Context(), clusterPrefix+":index:"+l.progressDir()).Result()
	for _, f := range files {
		n, _ := l.rdb.HStrLen(t.Context(), clusterPrefix+"/"+l.progressDir()+"/"+f, "value").Result()
		t.Logf("  progress file %s: %d bytes", f, n)
	}
}

// progressDir is the rotation's folder in storage (caddymodule/rotation's
// layout: legacygate/rotation/<start>-<end>).
func (l *clusterLab) progressDir() string {
	return "legacygate/rotation/" + strconv.FormatInt(l.start.Unix(), 10) + "-" + strconv.FormatInt(l.end.Unix(), 10)
}

// seedProgress stores a progress file of n confirmed clients, as a
// gateway that confirmed them would have written it.
func seedProgress(t *testing.T, l *clusterLab, n int) {
	t.Helper()
	table, err := rotationtable.NewRotationTable(rotationtable.RotationPolicy{
		Window:            rotationtable.Window{Start: l.start, End: l.end},
		ConfirmHeartbeats: 3,
		Grace:             time.Hour,
	}, n)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range n {
		id := fmt.Sprintf("{%08X-0000-4000-8000-%012X}", i, i)
		table.AnchorFetched(id, now)
		for j := range 3 {
			table.Heartbeat(id, now.Add(time.Duration(j+1)*time.Second), false)
		}
	}
	data, err := table.Snapshot().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	s := &redisstorage.Storage{Address: []string{l.redis.Addr}, Prefix: clusterPrefix}
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Cleanup() }()
	if err := s.Store(t.Context(), l.progressDir()+"/seed.lgrt", data); err != nil {
		t.Fatal(err)
	}
	t.Logf("seeded %d confirmed clients: a progress file of %d bytes", n, len(data))
}

// redisCounters are Redis's total commands, bytes in and out, and calls
// per command.
func redisCounters(t *testing.T, rdb *redis.Client) map[string]int64 {
	t.Helper()
	info, err := rdb.Info(t.Context(), "commandstats", "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for line := range strings.SplitSeq(info, "\r\n") {
		if name, rest, ok := strings.Cut(line, ":"); ok {
			switch {
			case name == "total_net_input_bytes":
				out["in"], _ = strconv.ParseInt(rest, 10, 64)
			case name == "total_net_output_bytes":
				out["out"], _ = strconv.ParseInt(rest, 10, 64)
			case strings.HasPrefix(name, "cmdstat_"):
				calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
				n, _ := strconv.ParseInt(calls, 10, 64)
				out["cmd:"+strings.TrimPrefix(name, "cmdstat_")] = n
				out["calls"] += n
			}
		}
	}
	return out
}
