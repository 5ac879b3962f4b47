package heartbeatlimit

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/legacygate/legacygate/integration/redislab"
	"github.com/legacygate/legacygate/internal/limiter"
)

// clusterTrio provisions three heartbeat_limit handlers on one Redis, as
// three gateways would. In one test process identical blocks would be one
// limiter, so their instance_ttl differs, which makes each a limiter of its
// own with its own instance name.
func clusterTrio(t *testing.T, addr, prefix string) [3]*HeartbeatLimit {
	t.Helper()
	var hs [3]*HeartbeatLimit
	for i := range hs {
		hs[i] = provisionHeartbeat(t, fmt.Sprintf(`heartbeat_limit {
	key {http.request.uri.query.hostid}
	rate 1/60s
	burst 3
	max_clients 1000
	cluster redis {
		address %s
		key_prefix %s
		interval 200ms
		instance_ttl %dms
	}
}`, addr, prefix, 600+100*i))
	}
	return hs
}

func TestHeartbeatClusterBurstSpentAtOneInstanceIsRefusedAtTheOthers(t *testing.T) {
	s := redislab.Start(t, redislab.Options{})
	hs := clusterTrio(t, s.Addr, uniquePrefix("burst"))
	if hs[0].hasher != hs[1].hasher || hs[1].hasher != hs[2].hasher {
		t.Fatal("the instances hash keys differently: the zone's seed is not shared")
	}
	for i := range 3 {
		rec := serveHeartbeat(t, hs[0], heartbeatRequest("GET", "/?hostid=AB12", "192.0.2.1", ""), &countingNext{})
		if rec.Code != http.StatusOK {
			t.Fatalf("request %d at A: %d", i, rec.Code)
		}
	}
	// One interval (200ms) bounds the spread; allow scheduling slack.
	time.Sleep(400 * time.Millisecond)
	for i, h := range hs[1:] {
		// The key is case-folded: ab12 is AB12's bucket, spent at A.
		rec := serveHeartbeat(t, h, heartbeatRequest("GET", "/?hostid=ab12", "192.0.2.1", ""), &countingNext{})
		if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
			t.Fatalf("instance %c: the client's 4th request got %d, want 429 with Retry-After", 'B'+i, rec.Code)
		}
		rec = serveHeartbeat(t, h, heartbeatRequest("GET", "/?hostid=CD34", "192.0.2.2", ""), &countingNext{})
		if rec.Code != http.StatusOK {
			t.Fatalf("instance %c: another client got %d, want 200", 'B'+i, rec.Code)
		}
	}
}

// testExchange builds an exchange for a limiter of its own, as one gateway
// of a cluster would hold; the test drives its sync by hand.
func testExchange(t testing.TB, addr, prefix, instance string, global time.Duration, logger *zap.Logger) *exchange {
	t.Helper()
	return testExchangeOf(t, addr, prefix, instance, global, 1000, logger)
}

// testExchangeOf is testExchange for a limiter of maxClients keys.
func testExchangeOf(t testing.TB, addr, prefix, instance string, global time.Duration, maxClients int, logger *zap.Logger) *exchange {
	t.Helper()
	c := &HeartbeatCluster{Address: addr, Interval: caddy.Duration(200 * time.Millisecond), InstanceTTL: caddy.Duration(600 * time.Millisecond), Timeout: caddy.Duration(500 * time.Millisecond)}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := c.connect(ctx); err != nil {
		t.Fatal(err)
	}
	c.prefix = prefix + ":heartbeat_limit:default:"
	per, err := limiter.New(limiter.Config{Interval: time.Minute, Burst: 3, MaxKeys: maxClients})
	if err != nil {
		t.Fatal(err)
	}
	ceiling, err := limiter.NewCeiling(global, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	counts := clusterCounters{
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "failures"}),
		dropped:  prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"}),
		members:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "members"}),
		share:    prometheus.NewGauge(prometheus.GaugeOpts{Name: prefix}),
	}
	h := &HeartbeatLimit{Cluster: c, interval: time.Minute, Burst: 3, MaxClients: maxClients, globalInterval: global, logger: logger, clusterCounts: counts}
	ex := newExchange(h, &state{perClient: per, ceiling: ceiling, instance: instance})
	ex.clients = append(ex.clients, c.conn)
	t.Cleanup(func() { _ = ex.Destruct(); c.close() })
	return ex
}

// uniquePrefix keeps runs apart: a process remembers each prefix's live
// count, which spares a reloaded instance the warm-up.
func uniquePrefix(name string) string {
	return fmt.Sprintf("%s%d", name, time.Now().UnixNano())
}

func syncAll(exs ...*exchange) {
	for _, ex := range exs {
		ex.sync()
	}
}

func TestHeartbeatClusterCeilingIsDividedAmongLiveInstances(t *testing.T) {
	s := redislab.Start(t, redislab.Options{})
	const global = 25 * time.Millisecond // 40/1s
	prefix := uniquePrefix("share")
	a := testExchange(t, s.Addr, prefix, "a", global, zap.NewNop())
	b := testExchange(t, s.Addr, prefix, "b", global, zap.NewNop())
	c := testExchange(t, s.Addr, prefix, "c", global, zap.NewNop())
	syncAll(a, b, c, a, b)
	for _, ex := range []*exchange{a, b, c} {
		if got := ex.ceiling.Interval(); got != 3*global {
			t.Fatalf("instance %s admits one per %v, want %v (40/s ÷ 3)", ex.instance, got, 3*global)
		}
	}
	// c leaves cleanly (a reload or a stop): the others keep their share
	// (below the ceiling) until instance_ttl has passed without seeing it.
	_ = c.Destruct()
	syncAll(a, b)
	if a.ceiling.Interval() != 3*global || b.ceiling.Interval() != 3*global {
		t.Fatalf("just after c left: %v and %v, want still %v", a.ceiling.Interval(), b.ceiling.Interval(), 3*global)
	}
	for range 2 * a.ttl / (a.interval / 2) {
		time.Sleep(a.interval / 2)
		syncAll(a, b)
	}
	if a.ceiling.Interval() != 2*global || b.ceiling.Interval() != 2*global {
		t.Fatalf("instance_ttl after c left: %v and %v, want %v", a.ceiling.Interval(), b.ceiling.Interval(), 2*global)
	}
	// b dies (stops exchanging): it counts until its membership expires,
	// and a's share grows instance_ttl after that.
	// a last saw b at most interval/2 before b's entry expires.
	last := time.Now()
	for time.Since(last) < 2*a.ttl-a.interval {
		syncAll(a)
		if a.members.Load() != 2 {
			t.Fatalf("a sees %d live %v after b's last exchange, want 2 until b's ttl and a's", a.members.Load(), time.Since(last))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(a.interval + 100*time.Millisecond)
	syncAll(a)
	if a.ceiling.Interval() != global {
		t.Fatalf("after b's ttl: a admits one per %v, want the whole %v", a.ceiling.Interval(), global)
	}
}

func TestHeartbeatClusterNewInstanceAdmitsNothingUntilTheOthersSawIt(t *testing.T) {
	s := redislab.Start(t, redislab.Options{})
	prefix := uniquePrefix("warm")
	a := testExchange(t, s.Addr, prefix, "a", 25*time.Millisecond, zap.NewNop())
	if warming, left := a.warming(); !warming || left <= 0 || left > a.warmUp() {
		t.Fatalf("a new instance: warming %v for %v, want up to %v", warming, left, a.warmUp())
	}
	a.sync()
	if warming, _ := a.warming(); !warming {
		t.Fatal("a first registration ended the warm-up: the others have not seen it yet")
	}
	time.Sleep(a.warmUp())
	if warming, _ := a.warming(); warming {
		t.Fatal("still warming after the warm-up")
	}
	// The same instance again (a reload that built a new state under the
	// same name): already live, so no warm-up once it has exchanged.
	b := testExchange(t, s.Addr, prefix, "a", 25*time.Millisecond, zap.NewNop())
	b.warmUntil.Store(time.Now().Add(time.Hour).UnixNano())
	b.sync()
	if warming, _ := b.warming(); warming {
		t.Fatal("an instance already live warmed up again")
	}
}

func TestHeartbeatClusterHandlerRejectsGlobalWhileWarmingUp(t *testing.T) {
	s := redislab.Start(t, redislab.Options{})
	h := provisionHeartbeat(t, fmt.Sprintf(`heartbeat_limit {
	key {http.request.uri.query.hostid}
	rate 1/60s
	burst 3
	global_rate 40/1s
	cluster redis {
		address %s
		key_prefix %s
		interval 200ms
	}
}`, s.Addr, uniquePrefix("handlerwarm")))
	rec := serveHeartbeat(t, h, heartbeatRequest("GET", "/?hostid=AB12", "192.0.2.1", ""), &countingNext{})
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("during the warm-up: %d, want 429", rec.Code)
	}
	waitFor(t, "the warm-up to end", func() bool { w, _ := h.exchange.warming(); return !w })
	rec = serveHeartbeat(t, h, heartbeatRequest("GET", "/?hostid=AB12", "192.0.2.1", ""), &countingNext{})
	if rec.Code != http.StatusOK {
		t.Fatalf("after the warm-up: %d, want 200 (the refused request was refunded)", rec.Code)
	}
	for i := range 2 {
		if rec := serveHeartbeat(t, h, heartbeatRequest("GET", "/?hostid=AB12", "192.0.2.1", ""), &countingNext{}); rec.Code != http.StatusOK {
			t.Fatalf("request %d of the burst: %d", i+2, rec.Code)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

func TestHeartbeatClusterRedisOutageKeepsDecidingLogsOnceAndResyncs(t *testing.T) {
	s := redislab.Start(t, redislab.Options{})
	core, logs := observer.New(zap.InfoLevel)
	prefix := uniquePrefix("outage")
	a := testExchange(t, s.Addr, prefix, "a", 25*time.Millisecond, zap.New(core))
	b := testExchange(t, s.Addr, prefix, "b", 25*time.Millisecond, zap.NewNop())
	syncAll(a, b, a)
	s.Stop()
	hashes := []uint64{11, 12, 13}
	for _, k := range hashes {
		if ok, _ := a.perClient.Allow(k); !ok {
			t.Fatal("a local decision failed during the outage")
		}
		a.spent(k)
	}
	syncAll(a, a, a)
	if got := testutil.ToFloat64(a.metrics.failures); got != 3 {
		t.Fatalf("failures = %v, want 3", got)
	}
	if got := logs.FilterMessageSnippet("Redis unreachable").Len(); got != 1 {
		t.Fatalf("%d outage log lines, want 1", got)
	}
	if a.ceiling.Interval() != 2*25*time.Millisecond {
		t.Fatalf("during the outage a admits one per %v, want the last known share %v", a.ceiling.Interval(), 50*time.Millisecond)
	}
	if a.journal.Len() != len(hashes) {
		t.Fatalf("journal holds %d keys during the outage, want %d kept for the re-sync", a.journal.Len(), len(hashes))
	}
	s.Restart(t) // an empty Redis, as after a crash without persistence
	syncAll(a, b)
	if got := logs.FilterMessageSnippet("Redis reachable again").Len(); got != 1 {
		t.Fatalf("%d recovery log lines, want 1", got)
	}
	probe := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer probe.Close()
	if seed, err := probe.Get(context.Background(), a.prefix+"seed").Bytes(); err != nil || string(seed) != string(a.seed[:]) {
		t.Fatalf("the zone's seed after the wipe: %x, %v; want it written back", seed, err)
	}
	for _, k := range hashes {
		for range 2 {
			if ok, _ := b.perClient.Allow(k); !ok {
				t.Fatalf("key %d: b refused within the two tokens left", k)
			}
		}
		if ok, _ := b.perClient.Allow(k); ok {
			t.Fatalf("key %d: b did not learn of the token spent at a during the outage", k)
		}
	}
	if a.members.Load() != 2 || b.members.Load() != 2 {
		t.Fatalf("after the restart: a sees %d, b sees %d, want 2", a.members.Load(), b.members.Load())
	}
}

func TestHeartbeatClusterProvisionNamesTheBadField(t *testing.T) {
	tests := []struct{ name, block, want string }{
		{"no backend", "cluster {\n}", "want a backend"},
		{"unknown backend", "cluster etcd {\n}", `unknown backend "etcd"`},
		{"unknown subdirective", "cluster redis {\n adress 127.0.0.1:1\n}", `unknown subdirective "adress"`},
		{"bad address", "cluster redis {\n address localhost\n}", "address"},
		{"bad port", "cluster redis {\n address 127.0.0.1:99999\n}", "address"},
		{"ttl not above interval", "cluster redis {\n address 127.0.0.1:1\n interval 1s\n instance_ttl 1s\n}", "instance_ttl"},
		{"tiny interval", "cluster redis {\n address 127.0.0.1:1\n interval 1ms\n}", "interval"},
		{"negative db", "cluster redis {\n address 127.0.0.1:1\n db -1\n}", "db"},
		{"with distributed", "distributed {\n}\ncluster redis {\n address 127.0.0.1:1\n}", "distributed"},
		{"unreachable at first start", "cluster redis {\n address 127.0.0.1:1\n timeout 200ms\n}", "first start needs Redis"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tryProvisionHeartbeat(t, "heartbeat_limit {\n rate 1/60s\n"+tt.block+"\n}")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// redisStorage is a file storage that also shares a Redis client, as
// caddy.storage.redis does.
type redisStorage struct {
	*certmagic.FileStorage
	client redis.UniversalClient
}

func (s redisStorage) RedisClient() redis.UniversalClient { return s.client }
func (s redisStorage) KeyPrefix() string                  { return "fromstorage" }

type testRedisStorageModule struct {
	Addr string `json:"addr"`
}

func (testRedisStorageModule) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.storage.heartbeat_test_redis", New: func() caddy.Module { return new(testRedisStorageModule) }}
}

func (m testRedisStorageModule) CertMagicStorage() (certmagic.Storage, error) {
	return redisStorage{&certmagic.FileStorage{Path: "unused"}, redis.NewClient(&redis.Options{Addr: m.Addr})}, nil
}

func init() { caddy.RegisterModule(testRedisStorageModule{}) }

func TestHeartbeatClusterWithoutAddressUsesTheStorageRedisClient(t *testing.T) {
	s := redislab.Start(t, redislab.Options{})
	raw, _ := json.Marshal(map[string]string{"module": "heartbeat_test_redis", "addr": s.Addr})
	ctx, err := caddy.ProvisionContext(&caddy.Config{StorageRaw: raw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctx.Storage().(redisStorage).client.Close() })
	h := new(HeartbeatLimit)
	h.Rate, h.Burst, h.MaxClients = "1/60s", 3, 1000
	h.Cluster = &HeartbeatCluster{Interval: caddy.Duration(100 * time.Millisecond)}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	probe := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer probe.Close()
	waitFor(t, "the instance's membership in the storage's Redis", func() bool {
		n, err := probe.ZCard(context.Background(), "fromstorage:heartbeat_limit:default:members").Result()
		return err == nil && n == 1
	})
}

// BenchmarkHeartbeatLimitServeHTTPCluster is BenchmarkHeartbeatLimitServeHTTP
// in cluster mode: the allowed path also notes the spend in the journal
// (the exchange with Redis runs in the background).
//
//	go test -run '^$' -bench ServeHTTP ./caddymodule/heartbeatlimit/
func BenchmarkHeartbeatLimitServeHTTPCluster(b *testing.B) {
	s := redislab.Start(b, redislab.Options{})
	benchAllowedHeartbeat(b, fmt.Sprintf("heartbeat_limit {\n key {http.request.uri.query.hostid} {http.vars.client_ip}\n rate 1000000000/1s\n burst 1000000000\n cluster redis {\n address %s\n key_prefix %s\n }\n}", s.Addr, uniquePrefix("bench")))
}

func TestHeartbeatClusterCaddyfileSetsEveryField(t *testing.T) {
	h := new(HeartbeatLimit)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`heartbeat_limit {
	rate 1/60s
	cluster redis {
		address redis.internal:6380
		username gw
		password {env.REDIS_PASSWORD}
		db 2
		key_prefix lg
		tls
		timeout 3s
		interval 500ms
		instance_ttl 2s
	}
}`))
	if err != nil {
		t.Fatal(err)
	}
	want := HeartbeatCluster{
		Address: "redis.internal:6380", Username: "gw", Password: "{env.REDIS_PASSWORD}", DB: 2,
		KeyPrefix: "lg", TLS: true, Timeout: caddy.Duration(3 * time.Second),
		Interval: caddy.Duration(500 * time.Millisecond), InstanceTTL: caddy.Duration(2 * time.Second),
	}
	if h.Cluster == nil || *h.Cluster != want {
		t.Fatalf("cluster = %+v, want %+v", h.Cluster, want)
	}
}

func TestHeartbeatClusterSpendRecordsRoundTrip(t *testing.T) {
	per, err := limiter.New(limiter.Config{Interval: time.Minute, Burst: 3, MaxKeys: 100})
	if err != nil {
		t.Fatal(err)
	}
	ex := &exchange{perClient: per}
	now := per.Now()
	taken := []takenSpend{
		{1, limiter.Spend{Tokens: 1, Last: now}},
		{0xFFFFFFFFFFFFFFFF, limiter.Spend{Tokens: 300, Last: now - int64(1500*time.Millisecond)}},
	}
	recs := ex.encode(taken, time.Now())
	if len(recs) != 1 || len(recs[0]) != 2*recordEntry {
		t.Fatalf("records %d, want one of %d bytes", len(recs), 2*recordEntry)
	}
	type got struct {
		key    uint64
		tokens int
		age    time.Duration
	}
	var entries []got
	if !decodeSpends(string(recs[0]), func(k uint64, n int, age time.Duration) { entries = append(entries, got{k, n, age}) }) {
		t.Fatal("a record encode wrote did not decode")
	}
	want := []got{{1, 1, 0}, {0xFFFFFFFFFFFFFFFF, 255, 1500 * time.Millisecond}}
	if len(entries) != 2 || entries[0] != want[0] || entries[1].key != want[1].key || entries[1].tokens != 255 || entries[1].age < 1500*time.Millisecond || entries[1].age > 1600*time.Millisecond {
		t.Fatalf("decoded %v, want about %v", entries, want)
	}
	for _, bad := range []string{"x", string(recs[0][:recordEntry+1]), strings.Repeat("\x00", (recordMaxEntries+1)*recordEntry)} {
		if decodeSpends(bad, func(uint64, int, time.Duration) { t.Fatal("an entry of a malformed record was used") }) {
			t.Fatalf("a record of %d bytes was accepted", len(bad))
		}
	}
}

func FuzzDecodeSpends(f *testing.F) {
	f.Add("")
	f.Add(strings.Repeat("\x01", recordEntry))
	f.Add(strings.Repeat("\xff", 2*recordEntry+3))
	f.Fuzz(func(t *testing.T, data string) {
		n := 0
		ok := decodeSpends(data, func(_ uint64, tokens int, age time.Duration) {
			n++
			if tokens < 0 || tokens > 255 || age < 0 {
				t.Fatalf("entry out of range: %d tokens, age %v", tokens, age)
			}
		})
		if ok != (len(data)%recordEntry == 0 && len(data) <= recordMaxEntries*recordEntry) {
			t.Fatalf("accepted %v for %d bytes", ok, len(data))
		}
		if ok && n != len(data)/recordEntry {
			t.Fatalf("%d entries from %d bytes", n, len(data))
		}
	})
}
