package limiter

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

const benchKeys = 1_000_000

func knownKeys() []uint64 {
	rng := rand.New(rand.NewPCG(3, 4))
	keys := make([]uint64, benchKeys)
	for i := range keys {
		keys[i] = rng.Uint64()
	}
	return keys
}

func filledLimiter(b *testing.B, keys []uint64) *Limiter {
	b.Helper()
	l, err := New(Config{Interval: time.Nanosecond, Burst: 1 << 20, MaxKeys: benchKeys})
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range keys {
		l.Allow(k)
	}
	if l.Len() != benchKeys {
		b.Fatalf("tracked %d keys, want %d", l.Len(), benchKeys)
	}
	return l
}

// BenchmarkAllow is the hot path with 1M tracked keys: each iteration is a
// request of a known key, keys visited in random order (cache misses included).
func BenchmarkAllow(b *testing.B) {
	keys := knownKeys()
	l := filledLimiter(b, keys)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		l.Allow(keys[i%benchKeys])
	}
}

// BenchmarkAllowSameKey is the same path for one key among the 1M, kept in
// cache: the cost of the code without memory latency.
func BenchmarkAllowSameKey(b *testing.B) {
	keys := knownKeys()
	l := filledLimiter(b, keys)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		l.Allow(keys[12345])
	}
}

func BenchmarkAllowParallel(b *testing.B) {
	keys := knownKeys()
	l := filledLimiter(b, keys)
	var next atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(1 << 20)
		for pb.Next() {
			i++
			l.Allow(keys[i%benchKeys])
		}
	})
}

// BenchmarkXTimeRateMap is the baseline: golang.org/x/time/rate limiters
// in a map under one mutex, the shape most Go rate limiters take, at the same
// 1M keys. It reports its own heap per key for comparison.
func BenchmarkXTimeRateMap(b *testing.B) {
	keys := knownKeys()
	before := heapInUse()
	var mu sync.Mutex
	m := make(map[uint64]*rate.Limiter)
	for _, k := range keys {
		m[k] = rate.NewLimiter(rate.Every(time.Nanosecond), 1<<20)
	}
	b.ReportMetric(float64(heapInUse()-before)/benchKeys, "heapB/key")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		mu.Lock()
		m[keys[i%benchKeys]].Allow()
		mu.Unlock()
	}
}

func BenchmarkHasherSum(b *testing.B) {
	h := NewHasher(RandomSeed())
	key := []byte("0A1B2C3D4E5F6071\x00203.0.113.45")
	b.ReportAllocs()
	for b.Loop() {
		h.Sum(key)
	}
}
