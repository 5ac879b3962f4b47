package heartbeatlimit

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/caddymodule/internal/redispool"
	"github.com/legacygate/legacygate/internal/limiter"
)

// HeartbeatCluster makes heartbeat_limit instances sharing one Redis act as
// one limiter: one token bucket per client for the cluster, and global_rate
// as the cluster's ceiling. The request path never waits on Redis: each
// instance decides locally and exchanges with Redis in the background.
//
// Per-client budgets: every interval/2 each instance appends what its
// clients spent since its last push (key hash, tokens, when) to a Redis
// stream and reads what the others appended, charging it to its own
// buckets. A client that spent its burst at one instance is limited at
// every other within one interval.
//
// Ceiling: each instance refreshes its membership (a sorted set scored by
// expiry, instance_ttl) at every exchange and admits global_rate ÷ live
// instances. A new instance admits nothing through the ceiling for 1.5
// intervals after it first registers, until every other has seen it and
// lowered its share, so the cluster never admits more than global_rate
// while an instance joins. An instance that dies keeps its share counted
// until its membership expires (instance_ttl), so the others stay below
// the ceiling until then.
//
// Redis outages: an instance keeps deciding locally at its last share
// (global_rate ÷ last known live instances: the safe choice, since all
// instances lose Redis together and each taking the full rate would let
// the manager see n times the ceiling), logs once when Redis goes and once
// when it returns, counts failed exchanges, and keeps its journal (bounded
// by max_clients) to push when Redis returns.
type HeartbeatCluster struct {
	// Address of the Redis server, host:port. Empty means the Redis client
	// of the configured storage (caddy.storage.redis), which must then
	// expose one.
	Address string `json:"address,omitempty"`

	// Username and Password authenticate to Redis (placeholders such as
	// {env.REDIS_PASSWORD} are replaced at provision time).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// DB is the Redis database number. Default 0.
	DB int `json:"db,omitempty"`

	// KeyPrefix begins every Redis key this limiter writes. Default
	// "legacygate", or the storage's prefix when its client is used.
	KeyPrefix string `json:"key_prefix,omitempty"`

	// TLS connects to Redis over TLS 1.2+ (system roots).
	TLS bool `json:"tls,omitempty"`

	// Timeout bounds each exchange with Redis (dial, read, write). Default 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Interval bounds how long a spend at one instance takes to reach the
	// others (instances exchange every interval/2) and how long a
	// membership change takes to re-balance the ceiling. Default 1s.
	Interval caddy.Duration `json:"interval,omitempty"`

	// InstanceTTL is how long an instance counts as live after its last
	// exchange. Default 3 intervals; it must exceed the interval.
	InstanceTTL caddy.Duration `json:"instance_ttl,omitempty"`

	prefix string
	conn   *redisConn
}

// RedisClientSource is what a storage module offers when its Redis client
// may be shared: heartbeat_limit's cluster uses it when no address is given.
type RedisClientSource interface {
	RedisClient() redis.UniversalClient
	KeyPrefix() string
}

const (
	defaultClusterInterval = time.Second
	defaultClusterTimeout  = 2 * time.Second
	defaultKeyPrefix       = "legacygate"
	maxMembers             = 1024
	recordEntry            = 13 // key hash, tokens, age in ms
	recordMaxEntries       = 32 << 10
	readBatch              = 256
	readRounds             = 16
	maxRetention           = 10 * time.Minute
)

// redisConn is a Redis client and, if this package opened it, its key in
// redispool.
type redisConn struct {
	client  redis.UniversalClient
	addr    string
	poolKey string
}

// provision checks the settings, connects and returns the zone's key seed.
func (c *HeartbeatCluster) provision(ctx caddy.Context, h *HeartbeatLimit) ([limiter.SeedSize]byte, error) {
	var seed [limiter.SeedSize]byte
	if h.interval == 0 && h.globalInterval == 0 {
		return seed, errors.New("needs rate or global_rate")
	}
	if c.Interval == 0 {
		c.Interval = caddy.Duration(defaultClusterInterval)
	}
	if c.Interval < caddy.Duration(10*time.Millisecond) {
		return seed, fmt.Errorf("interval %v: must be at least 10ms", time.Duration(c.Interval))
	}
	if c.InstanceTTL == 0 {
		c.InstanceTTL = 3 * c.Interval
	}
	if c.InstanceTTL <= c.Interval {
		return seed, fmt.Errorf("instance_ttl %v: must exceed interval %v", time.Duration(c.InstanceTTL), time.Duration(c.Interval))
	}
	if c.Timeout == 0 {
		c.Timeout = caddy.Duration(defaultClusterTimeout)
	}
	if c.Timeout < 0 {
		return seed, fmt.Errorf("timeout %v: must be positive", time.Duration(c.Timeout))
	}
	if c.DB < 0 {
		return seed, fmt.Errorf("db %d: must not be negative", c.DB)
	}
	quietRedis.Do(func() { redis.SetLogger(redisLogger{caddy.Log().Named("redis")}) })
	if err := c.connect(ctx); err != nil {
		return seed, err
	}
	zone := h.Zone
	if zone == "" {
		zone = "default"
	}
	c.prefix = c.KeyPrefix + ":heartbeat_limit:" + zone + ":"
	if err := h.provisionClusterMetrics(ctx, zone); err != nil {
		return seed, err
	}
	return c.loadSeed(ctx)
}

// connect opens this limiter's own client, or takes the storage's.
func (c *HeartbeatCluster) connect(ctx caddy.Context) error {
	if c.Address == "" {
		src, ok := ctx.Storage().(RedisClientSource)
		if !ok {
			return errors.New("address: required (the configured storage shares no Redis client)")
		}
		if c.KeyPrefix == "" {
			c.KeyPrefix = src.KeyPrefix()
		}
		c.conn = &redisConn{client: src.RedisClient(), addr: "storage"}
		return nil
	}
	repl := caddy.NewReplacer()
	addr := repl.ReplaceAll(c.Address, "")
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want host:port: %w", c.Address, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address %q: port %q out of range", c.Address, port)
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = defaultKeyPrefix
	}
	opts := &redis.UniversalOptions{
		Addrs:        []string{addr},
		Username:     repl.ReplaceAll(c.Username, ""),
		Password:     repl.ReplaceAll(c.Password, ""),
		DB:           c.DB,
		DialTimeout:  time.Duration(c.Timeout),
		ReadTimeout:  time.Duration(c.Timeout),
		WriteTimeout: time.Duration(c.Timeout),
		MaxRetries:   -1, // the next exchange is the retry; never pile up
		PoolSize:     2,
	}
	if c.TLS {
		opts.TLSConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	poolKey := fmt.Sprintf("heartbeat_limit|%q|%q|%q|%d|%t|%d", addr, opts.Username, opts.Password, c.DB, c.TLS, c.Timeout)
	client := redispool.Acquire(poolKey, func() redis.UniversalClient { return redis.NewUniversalClient(opts) })
	c.conn = &redisConn{client: client, addr: addr, poolKey: poolKey}
	return nil
}

// quietRedis routes go-redis's own log lines (one per failed dial) to
// zap at debug level: an outage is logged once, by the exchange.
var quietRedis sync.Once

type redisLogger struct{ l *zap.Logger }

func (r redisLogger) Printf(_ context.Context, format string, v ...any) {
	if ce := r.l.Check(zap.DebugLevel, "go-redis"); ce != nil {
		ce.Write(zap.String("detail", fmt.Sprintf(format, v...)))
	}
}

// close lets go of the client if this package opened it.
func (c *HeartbeatCluster) close() {
	if c.conn != nil && c.conn.poolKey != "" {
		redispool.Release(c.conn.poolKey)
	}
	c.conn = nil
}

// seeds remembers each zone's key seed for this process, so that a reload
// while Redis is down keeps the seed it had.
var seeds sync.Map // Redis address and key prefix → [limiter.SeedSize]byte

// loadSeed returns the zone's key hash seed, created by the first instance
// (SET NX) so that every instance hashes a client to the same key.
func (c *HeartbeatCluster) loadSeed(ctx context.Context) ([limiter.SeedSize]byte, error) {
	var seed [limiter.SeedSize]byte
	cacheKey := c.conn.addr + "\x00" + strconv.Itoa(c.DB) + "\x00" + c.prefix
	rctx, cancel := context.WithTimeout(ctx, time.Duration(c.Timeout))
	defer cancel()
	fresh := limiter.RandomSeed()
	key := c.prefix + "seed"
	client := c.conn.client
	if err := client.SetNX(rctx, key, fresh[:], 0).Err(); err == nil {
		b, err := client.Get(rctx, key).Bytes()
		if err == nil {
			if len(b) != limiter.SeedSize {
				return seed, fmt.Errorf("redis key %s: %d bytes, want %d", key, len(b), limiter.SeedSize)
			}
			copy(seed[:], b)
			seeds.Store(cacheKey, seed)
			return seed, nil
		}
	}
	if v, ok := seeds.Load(cacheKey); ok {
		return v.([limiter.SeedSize]byte), nil
	}
	return seed, fmt.Errorf("address %s: reading the zone's key seed from Redis failed and this process has none yet (a first start needs Redis)", c.conn.addr)
}

// exchanges holds one exchange per limiter state (the pool key of
// heartbeat_limit's states), so a reload that keeps the state keeps the
// exchange, its journal and its membership.
var exchanges = caddy.NewUsagePool()

// lastMembers remembers the live count each zone last saw, so that an
// exchange built on a reload starts at the share of the one it replaces.
var lastMembers sync.Map // key prefix → int64

// exchange is the background work of one clustered limiter state.
type exchange struct {
	prefix         string
	seed           [limiter.SeedSize]byte
	instance       string
	interval       time.Duration
	ttl            time.Duration
	timeout        time.Duration
	retention      time.Duration
	perClient      *limiter.Limiter
	ceiling        *limiter.Ceiling
	pacers         *pacers // the exit and wire spacing follow the share
	globalInterval time.Duration
	journal        *limiter.Journal
	epoch          int64 // wall-clock Unix ns at the limiter clock's zero
	logger         *zap.Logger
	metrics        clusterCounters

	mu      sync.Mutex
	clients []*redisConn // of the attached handlers, newest last

	members   atomic.Int64
	warmUntil atomic.Int64 // wall-clock Unix ns; the ceiling admits nothing before
	lastID    string
	highSeen  time.Time // when the live count in use was last seen
	down      bool
	synced    bool

	running  atomic.Bool
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// attachCluster takes (or builds) the exchange of h's state and starts
// using h's Redis client for it.
func (h *HeartbeatLimit) attachCluster(st *state) error {
	c := h.Cluster
	val, _, err := exchanges.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
		ex := newExchange(h, st)
		ex.running.Store(true)
		go ex.run()
		return ex, nil
	})
	if err != nil {
		return err
	}
	ex := val.(*exchange)
	ex.mu.Lock()
	ex.clients = append(ex.clients, c.conn)
	ex.mu.Unlock()
	h.exchange = ex
	return nil
}

// detachCluster lets go of h's exchange and closes h's client.
func (h *HeartbeatLimit) detachCluster() {
	if h.exchange != nil {
		ex := h.exchange
		h.exchange = nil
		// The last handler's client is still attached while the exchange
		// leaves the membership.
		_, _ = exchanges.Delete(h.poolKey)
		ex.mu.Lock()
		for i, conn := range ex.clients {
			if conn == h.Cluster.conn {
				ex.clients = append(ex.clients[:i], ex.clients[i+1:]...)
				break
			}
		}
		ex.mu.Unlock()
	}
	h.Cluster.close()
}

func newExchange(h *HeartbeatLimit, st *state) *exchange {
	c := h.Cluster
	ex := &exchange{
		prefix:         c.prefix,
		seed:           h.seed,
		instance:       st.instance,
		interval:       time.Duration(c.Interval),
		ttl:            time.Duration(c.InstanceTTL),
		timeout:        time.Duration(c.Timeout),
		perClient:      st.perClient,
		ceiling:        st.ceiling,
		pacers:         st.pacers,
		globalInterval: h.globalInterval,
		logger:         h.logger,
		metrics:        h.clusterCounts,
		stop:           make(chan struct{}),
		done:           make(chan struct{}),
	}
	now := time.Now()
	if ex.perClient != nil {
		ex.journal = limiter.NewJournal(h.MaxClients)
		ex.epoch = now.UnixNano() - ex.perClient.Now()
		// Spends matter for as long as a bucket takes to refill.
		ex.retention = min(maxRetention, h.interval*time.Duration(h.Burst))
	}
	ex.retention = max(ex.retention, 2*ex.interval)
	ex.lastID = strconv.FormatInt(now.Add(-ex.retention).UnixMilli(), 10) + "-0"
	members := int64(1)
	if v, ok := lastMembers.Load(c.prefix); ok {
		members = v.(int64)
	} else {
		ex.warmUntil.Store(now.Add(ex.warmUp()).UnixNano())
	}
	ex.setMembers(members)
	holdInstance(ex.instance)
	return ex
}

// warmUp is how long a new member admits nothing through the ceiling:
// until every other instance has exchanged once and seen it.
func (ex *exchange) warmUp() time.Duration { return ex.interval + ex.interval/2 }

// client returns the newest attached handler's Redis client.
func (ex *exchange) client() redis.UniversalClient {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if len(ex.clients) == 0 {
		return nil
	}
	return ex.clients[len(ex.clients)-1].client
}

// spent notes a token taken locally, for the others.
func (ex *exchange) spent(key uint64) {
	if ex.journal != nil {
		ex.journal.Add(key, ex.perClient.Now())
	}
}

// refunded takes back a token noted by spent.
func (ex *exchange) refunded(key uint64) {
	if ex.journal != nil {
		ex.journal.Remove(key)
	}
}

// warming reports whether the ceiling must admit nothing yet, and for how
// much longer.
func (ex *exchange) warming() (bool, time.Duration) {
	left := ex.warmUntil.Load() - time.Now().UnixNano()
	return left > 0, time.Duration(left)
}

func (ex *exchange) setMembers(n int64) {
	n = min(max(n, 1), maxMembers)
	ex.members.Store(n)
	if ex.ceiling != nil {
		share := limiter.ShareInterval(ex.globalInterval, int(n))
		ex.ceiling.SetInterval(share)
		if ex.pacers != nil {
			_ = ex.pacers.setInterval(share) // share ≥ globalInterval, which the pacers accepted
		}
		ex.metrics.share.Set(float64(time.Second) / float64(share))
	}
	ex.metrics.members.Set(float64(n))
}

// run exchanges every interval/2 until Destruct.
func (ex *exchange) run() {
	defer close(ex.done)
	ticker := time.NewTicker(ex.interval / 2)
	defer ticker.Stop()
	for {
		ex.sync()
		select {
		case <-ex.stop:
			return
		case <-ticker.C:
		}
	}
}

// Destruct stops the exchange and leaves the membership, so the others
// re-balance at once instead of after instance_ttl.
// It may be called more than once.
func (ex *exchange) Destruct() error {
	first := false
	ex.stopOnce.Do(func() { first = true })
	if !first {
		return nil
	}
	close(ex.stop)
	if ex.running.Load() {
		<-ex.done
	}
	if !releaseInstance(ex.instance) {
		return nil
	}
	if c := ex.client(); c != nil {
		ctx, cancel := context.WithTimeout(context.Background(), ex.timeout)
		defer cancel()
		_ = c.ZRem(ctx, ex.prefix+"members", ex.instance).Err()
	}
	return nil
}

// membership refreshes this instance's entry (scored by its expiry on
// Redis's clock), drops expired ones, and returns whether this instance
// was already live and how many are.
var membership = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
local was = 0
if prev and tonumber(prev) > now then was = 1 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return {was, redis.call('ZCARD', KEYS[1])}
`)

// sync pushes this instance's journal, refreshes its membership and pulls
// the others' spends, in one round trip (more only when much is pending).
func (ex *exchange) sync() {
	client := ex.client()
	if client == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), ex.timeout)
	defer cancel()
	now := time.Now()
	var taken []takenSpend
	if ex.journal != nil {
		dropped := ex.journal.Take(func(key uint64, sp limiter.Spend) {
			taken = append(taken, takenSpend{key, sp})
		})
		ex.metrics.dropped.Add(float64(dropped))
	}
	pipe := client.Pipeline()
	member := membership.Eval(ctx, pipe, []string{ex.prefix + "members"}, ex.instance, ex.ttl.Milliseconds())
	// A Redis that lost its memory gets the zone's seed back, so that an
	// instance starting after it hashes clients as the running ones do.
	pipe.SetNX(ctx, ex.prefix+"seed", ex.seed[:], 0)
	minID := strconv.FormatInt(now.Add(-ex.retention).UnixMilli(), 10)
	for _, rec := range ex.encode(taken, now) {
		pipe.XAdd(ctx, &redis.XAddArgs{
			Stream: ex.prefix + "spend", MinID: minID, Approx: true,
			Values: []any{"i", ex.instance, "t", now.UnixMilli(), "d", rec},
		})
	}
	var read *redis.XStreamSliceCmd
	if ex.journal != nil {
		read = pipe.XRead(ctx, &redis.XReadArgs{Streams: []string{ex.prefix + "spend", ex.lastID}, Count: readBatch, Block: -1})
	}
	_, err := pipe.Exec(ctx)
	if err != nil && !errors.Is(err, redis.Nil) {
		ex.failed(err, taken)
		return
	}
	res, err := member.Int64Slice()
	if err != nil || len(res) != 2 {
		ex.failed(fmt.Errorf("membership: %w", err), taken)
		return
	}
	if read != nil {
		n := ex.apply(read)
		for round := 1; n == readBatch && round < readRounds; round++ {
			read = client.XRead(ctx, &redis.XReadArgs{Streams: []string{ex.prefix + "spend", ex.lastID}, Count: readBatch, Block: -1})
			if err := read.Err(); err != nil && !errors.Is(err, redis.Nil) {
				break
			}
			n = ex.apply(read)
		}
	}
	ex.recovered(res[0] == 1, res[1])
}

type takenSpend struct {
	key uint64
	sp  limiter.Spend
}

// encode lays out spends as stream records of at most recordMaxEntries
// entries: key hash (8 bytes), tokens (1, capped at 255), and how many ms
// before now the last was spent (4), little-endian.
func (ex *exchange) encode(taken []takenSpend, now time.Time) [][]byte {
	var recs [][]byte
	localNow := ex.perClient.Now()
	for len(taken) > 0 {
		n := min(len(taken), recordMaxEntries)
		b := make([]byte, 0, n*recordEntry)
		for _, t := range taken[:n] {
			b = binary.LittleEndian.AppendUint64(b, t.key)
			b = append(b, byte(min(t.sp.Tokens, 255)))
			age := max(0, (localNow-t.sp.Last)/int64(time.Millisecond))
			b = binary.LittleEndian.AppendUint32(b, uint32(min(age, 1<<32-1)))
		}
		recs = append(recs, b)
		taken = taken[n:]
	}
	return recs
}

// apply charges the others' spends in read to the local buckets and
// returns how many records it read.
func (ex *exchange) apply(read *redis.XStreamSliceCmd) int {
	streams, err := read.Result()
	if err != nil || len(streams) == 0 {
		return 0
	}
	msgs := streams[0].Messages
	for _, m := range msgs {
		ex.lastID = m.ID
		if m.Values["i"] == ex.instance {
			continue
		}
		sent, err := strconv.ParseInt(fmt.Sprint(m.Values["t"]), 10, 64)
		data, ok := m.Values["d"].(string)
		if err != nil || !ok || sent < 0 || sent > math.MaxInt64/int64(time.Millisecond) {
			continue
		}
		base := sent*int64(time.Millisecond) - ex.epoch
		decodeSpends(data, func(key uint64, tokens int, age time.Duration) {
			ex.perClient.Charge(key, tokens, base-int64(age))
		})
	}
	return len(msgs)
}

// decodeSpends hands each entry of a record laid out by encode to fn, and
// reports whether the record was well formed; a malformed or oversized one
// (anyone who can write to the Redis can write to the stream) is ignored
// whole.
func decodeSpends(data string, fn func(key uint64, tokens int, age time.Duration)) bool {
	if len(data)%recordEntry != 0 || len(data) > recordMaxEntries*recordEntry {
		return false
	}
	for rest := data; len(rest) > 0; rest = rest[recordEntry:] {
		key := binary.LittleEndian.Uint64([]byte(rest[:8]))
		tokens := int(rest[8])
		age := time.Duration(binary.LittleEndian.Uint32([]byte(rest[9:13]))) * time.Millisecond
		fn(key, tokens, age)
	}
	return true
}

// failed keeps what could not be pushed, counts the failure and logs the
// first of a run.
func (ex *exchange) failed(err error, taken []takenSpend) {
	for _, t := range taken {
		ex.journal.Restore(t.key, t.sp)
	}
	ex.metrics.failures.Inc()
	// The last known count holds through the outage and for instance_ttl
	// after it, while the membership (maybe wiped) fills again.
	ex.highSeen = time.Now()
	if !ex.down {
		ex.down = true
		ex.logger.Warn("heartbeat_limit cluster: Redis unreachable; deciding locally at the last known share until it returns",
			zap.String("prefix", ex.prefix), zap.Int64("live_instances", ex.members.Load()), zap.Error(err))
	}
}

// recovered applies a successful exchange: the live count, and the end of
// a new member's warm-up when it turns out to be no new member (a reload).
func (ex *exchange) recovered(wasLive bool, live int64) {
	if !ex.synced {
		ex.synced = true
		if wasLive {
			ex.warmUntil.Store(0)
		}
	}
	recovered := ex.down
	ex.down = false
	// More instances take effect at once (a smaller share); fewer only once
	// the larger count has not been seen for instance_ttl, so that a
	// membership wiped with Redis's memory, or an exchange that raced a
	// join, never raises the share before the others could have lowered
	// theirs.
	now := time.Now()
	if live >= ex.members.Load() || now.Sub(ex.highSeen) >= ex.ttl {
		ex.highSeen = now
		ex.setMembers(live)
	}
	lastMembers.Store(ex.prefix, ex.members.Load())
	if recovered {
		ex.logger.Info("heartbeat_limit cluster: Redis reachable again; exchange resumed",
			zap.String("prefix", ex.prefix), zap.Int64("live_instances", ex.members.Load()),
			zap.Int64("registered_now", live))
	}
}

// clusterIdentity is the part of a limiter's lineage the cluster settings
// add: where it shares state.
func (c *HeartbeatCluster) identity() (json.RawMessage, error) {
	return json.Marshal(c)
}

// liveInstances counts this process's exchanges per instance name: a
// state replaced on a reload hands its instance name to its successor,
// and the last exchange of a name to go leaves the membership.
var liveInstances = struct {
	sync.Mutex
	n map[string]int
}{n: make(map[string]int)}

func holdInstance(name string) {
	liveInstances.Lock()
	liveInstances.n[name]++
	liveInstances.Unlock()
}

// releaseInstance reports whether name's last exchange has gone.
func releaseInstance(name string) bool {
	liveInstances.Lock()
	defer liveInstances.Unlock()
	liveInstances.n[name]--
	if liveInstances.n[name] > 0 {
		return false
	}
	delete(liveInstances.n, name)
	return true
}

var clusterMetrics = struct {
	failures *prometheus.CounterVec
	dropped  *prometheus.CounterVec
	members  *prometheus.GaugeVec
	share    *prometheus.GaugeVec
}{
	failures: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "legacygate", Subsystem: "heartbeat_limit", Name: "cluster_sync_failures_total",
		Help: "Exchanges with Redis that failed (the instance kept deciding locally), by zone.",
	}, []string{"zone"}),
	dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "legacygate", Subsystem: "heartbeat_limit", Name: "cluster_journal_dropped_total",
		Help: "Client spends not shared with the cluster because the journal was full (max_clients keys), by zone.",
	}, []string{"zone"}),
	members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "legacygate", Subsystem: "heartbeat_limit", Name: "cluster_members",
		Help: "Live instances of the cluster as last seen (or last known while Redis is unreachable), by zone.",
	}, []string{"zone"}),
	share: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "legacygate", Subsystem: "heartbeat_limit", Name: "cluster_ceiling_per_second",
		Help: "This instance's share of global_rate, in requests per second, by zone.",
	}, []string{"zone"}),
}

// clusterCounters are one zone's cluster metrics.
type clusterCounters struct {
	failures, dropped prometheus.Counter
	members, share    prometheus.Gauge
}

func (h *HeartbeatLimit) provisionClusterMetrics(ctx caddy.Context, zone string) error {
	reg := ctx.GetMetricsRegistry()
	failures, err := metrics.Register(reg, clusterMetrics.failures)
	if err != nil {
		return err
	}
	dropped, err := metrics.Register(reg, clusterMetrics.dropped)
	if err != nil {
		return err
	}
	members, err := metrics.Register(reg, clusterMetrics.members)
	if err != nil {
		return err
	}
	share, err := metrics.Register(reg, clusterMetrics.share)
	if err != nil {
		return err
	}
	h.clusterCounts = clusterCounters{
		failures: failures.WithLabelValues(zone),
		dropped:  dropped.WithLabelValues(zone),
		members:  members.WithLabelValues(zone),
		share:    share.WithLabelValues(zone),
	}
	return nil
}
