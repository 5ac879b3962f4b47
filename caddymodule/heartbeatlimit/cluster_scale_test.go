package heartbeatlimit

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/integration/redislab"
	"github.com/legacygate/legacygate/internal/limiter"
)

// The scale of docs/operations/cluster.md: 100,000 clients, each sending a
// heartbeat every 60 s (one token spent each), spread round robin over
// three gateways. LEGACYGATE_LONG=1 runs the measurements:
//
//	LEGACYGATE_LONG=1 go test -count=1 -v -run 'TestClusterScale' ./caddymodule/heartbeatlimit/
//
// The short versions, always run, check the same arithmetic on 3,000
// clients for 2 s.
const (
	scaleGateways = 3
	scalePeriod   = 60 * time.Second
	scaleTick     = 500 * time.Millisecond // the exchange runs every interval/2, interval 1s
)

func scaleSize(t *testing.T) (clients int, run time.Duration) {
	if os.Getenv("LEGACYGATE_LONG") == "1" {
		return 100_000, 30 * time.Second
	}
	return 3_000, 2 * time.Second
}

// scaleKey spreads client numbers over the hash space, as SipHash does.
func scaleKey(i int) uint64 { return uint64(i+1) * 0x9E3779B97F4A7C15 }

// redisInfo reads the counters of INFO stats and commandstats.
func redisInfo(t *testing.T, c *redis.Client) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, section := range []string{"stats", "commandstats", "memory"} {
		text, err := c.Info(context.Background(), section).Result()
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(text, "\r\n") {
			name, value, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			if strings.HasPrefix(name, "cmdstat_") {
				// calls=N,usec=…
				calls, _, _ := strings.Cut(strings.TrimPrefix(value, "calls="), ",")
				value = calls
			}
			if v, err := strconv.ParseFloat(value, 64); err == nil {
				out[name] = v
			}
		}
	}
	return out
}

func TestClusterScaleRedisCostPerGateway(t *testing.T) {
	clients, run := scaleSize(t)
	s := redislab.Start(t, redislab.Options{})
	prefix := uniquePrefix("scale")
	var exs [scaleGateways]*exchange
	for g := range exs {
		exs[g] = testExchangeOf(t, s.Addr, prefix, fmt.Sprintf("g%d", g), 25*time.Millisecond, 2*clients, zap.NewNop())
	}
	probe := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer probe.Close()
	syncAll(exs[:]...)
	before := redisInfo(t, probe)
	ticks := int(scalePeriod / scaleTick)
	start := time.Now()
	spends := 0
	for tick := 0; time.Since(start) < run; tick++ {
		for i := tick % ticks; i < clients; i += ticks {
			ex := exs[(i/ticks)%scaleGateways]
			if ok, _ := ex.perClient.Allow(scaleKey(i)); ok {
				ex.spent(scaleKey(i))
				spends++
			}
		}
		syncAll(exs[:]...)
		time.Sleep(time.Until(start.Add(time.Duration(tick+1) * scaleTick)))
	}
	elapsed := time.Since(start).Seconds()
	after := redisInfo(t, probe)
	delta := func(k string) float64 { return (after[k] - before[k]) / elapsed }
	// Commands a gateway sends (a script's inner calls are counted by
	// total_commands_processed too, and are Redis's work, not traffic).
	var ops float64
	for _, cmd := range []string{"eval", "set", "setnx", "xadd", "xread"} {
		ops += delta("cmdstat_"+cmd) / scaleGateways
	}
	work := delta("total_commands_processed") / scaleGateways
	in := delta("total_net_input_bytes") / scaleGateways
	out := delta("total_net_output_bytes") / scaleGateways
	t.Logf("%d clients, %d gateways, %.1f s: %d spends (%.0f/s for the cluster)", clients, scaleGateways, elapsed, spends, float64(spends)/elapsed)
	t.Logf("per gateway: %.1f Redis commands/s sent (%.1f with the script's inner calls), %.0f bytes/s to Redis, %.0f bytes/s from Redis", ops, work, in, out)
	for _, cmd := range []string{"eval", "set", "xadd", "xread", "info"} {
		t.Logf("  %s: %.2f/s per gateway", cmd, delta("cmdstat_"+cmd)/scaleGateways)
	}
	stream := prefix + ":heartbeat_limit:default:spend"
	mem, err := probe.MemoryUsage(context.Background(), stream, 0).Result()
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := probe.XLen(context.Background(), stream).Result()
	t.Logf("the spend stream: %d records, %d bytes in Redis (%.1f bytes per spend; it keeps burst × rate interval = 3 min of spends)",
		entries, mem, float64(mem)/float64(max(1, spends)))
	// Every spend reaches every gateway: pushed once (13 bytes) and read
	// by all three; more would mean an echo or a re-send.
	wantOut := float64(spends) * recordEntry / elapsed
	if out < wantOut*0.9 || out > wantOut*2+4096 {
		t.Fatalf("bytes from Redis per gateway %.0f/s, want about %.0f/s (each spend read once by each gateway)", out, wantOut)
	}
	if ops > 10 {
		t.Fatalf("%.1f commands/s per gateway: the exchange should cost about 8 (4 per half-interval)", ops)
	}
}

func TestClusterScaleFileStorageCostPerGateway(t *testing.T) {
	clients, _ := scaleSize(t)
	dir := t.TempDir()
	var ds [scaleGateways]*HeartbeatDistributed
	for g := range ds {
		l, err := limiter.New(limiter.Config{Interval: time.Minute, Burst: 3, MaxKeys: 2 * clients})
		if err != nil {
			t.Fatal(err)
		}
		d := &HeartbeatDistributed{
			Interval: caddy.Duration(defaultSyncIn), PurgeAge: caddy.Duration(10 * defaultSyncIn),
			storage: &certmagic.FileStorage{Path: dir}, dir: path.Join("legacygate", "heartbeat_limit", "default"),
			logger: zap.NewNop(), maxKeys: 2 * clients,
		}
		d.attach(l, fmt.Sprintf("g%d", g))
		ds[g] = d
	}
	// Steady state: every client heartbeated within the last 60 s, so
	// every bucket is below full and in its gateway's state file.
	for i := range clients {
		ds[i%scaleGateways].limiter.Allow(scaleKey(i))
	}
	start := time.Now()
	for _, d := range ds {
		d.sync()
	}
	perSync := time.Since(start) / scaleGateways
	var sizes [scaleGateways]int64
	var total int64
	for g := range sizes {
		info, err := os.Stat(filepath.Join(dir, "legacygate", "heartbeat_limit", "default", "instances", fmt.Sprintf("g%d", g)))
		if err != nil {
			t.Fatal(err)
		}
		sizes[g] = info.Size()
		total += info.Size()
	}
	interval := defaultSyncIn.Seconds()
	written := float64(sizes[0]) / interval
	read := float64(total-sizes[0]) / interval
	t.Logf("%d clients, %d gateways, distributed interval %v: each writes %d bytes and reads %d every interval (%v per exchange)",
		clients, scaleGateways, defaultSyncIn, sizes[0], total-sizes[0], perSync.Round(time.Millisecond))
	t.Logf("per gateway: %.0f bytes/s written, %.0f bytes/s read, %.1f file operations/s (1 write, 1 list, %d reads)",
		written, read, float64(2+scaleGateways-1)/interval, scaleGateways-1)
	want := int64(16 + clients/scaleGateways*stateEntry)
	if sizes[0] < want-stateEntry || sizes[0] > want+stateEntry {
		t.Fatalf("a state file of %d bytes, want about %d (16 bytes per client of the gateway)", sizes[0], want)
	}
}
