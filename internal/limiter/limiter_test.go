package limiter

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now int64
}

func (c *fakeClock) read() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now += int64(d)
	c.mu.Unlock()
}

func newTestLimiter(t testing.TB, interval time.Duration, burst, maxKeys int) (*Limiter, *fakeClock) {
	t.Helper()
	clock := &fakeClock{now: int64(time.Hour)}
	l, err := New(Config{Interval: interval, Burst: burst, MaxKeys: maxKeys, Clock: clock.read})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l, clock
}

// step is one request (or a pause) in a bucket scenario.
type step struct {
	after     time.Duration // clock advance before the request
	allowed   bool
	retryFrom time.Duration // expected retry-after when refused
}

func TestBucketRateBurstAndRefill(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		burst    int
		steps    []step
	}{
		{
			name: "burst of three then refused", interval: time.Minute, burst: 3,
			steps: []step{{0, true, 0}, {0, true, 0}, {0, true, 0}, {0, false, time.Minute}},
		},
		{
			name: "one token back after one interval", interval: time.Minute, burst: 3,
			steps: []step{
				{0, true, 0}, {0, true, 0}, {0, true, 0}, {0, false, time.Minute},
				{59 * time.Second, false, time.Second}, {time.Second, true, 0}, {0, false, time.Minute},
			},
		},
		{
			name: "full again after burst intervals", interval: time.Second, burst: 2,
			steps: []step{
				{0, true, 0}, {0, true, 0}, {0, false, time.Second},
				{10 * time.Second, true, 0}, {0, true, 0}, {0, false, time.Second},
			},
		},
		{
			name: "steady rate at exactly one per interval is never refused", interval: 5 * time.Second, burst: 1,
			steps: []step{{0, true, 0}, {5 * time.Second, true, 0}, {5 * time.Second, true, 0}, {4 * time.Second, false, time.Second}},
		},
		{
			name: "refused requests do not consume tokens", interval: time.Second, burst: 1,
			steps: []step{{0, true, 0}, {0, false, time.Second}, {0, false, time.Second}, {time.Second, true, 0}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, clock := newTestLimiter(t, tt.interval, tt.burst, 100)
			for i, s := range tt.steps {
				clock.advance(s.after)
				ok, retry := l.Allow(42)
				if ok != s.allowed || retry != s.retryFrom {
					t.Fatalf("step %d: Allow = %v, %v; want %v, %v", i, ok, retry, s.allowed, s.retryFrom)
				}
			}
		})
	}
}

func TestKeysHaveSeparateBuckets(t *testing.T) {
	l, _ := newTestLimiter(t, time.Minute, 1, 100)
	if ok, _ := l.Allow(1); !ok {
		t.Fatal("first request of key 1 refused")
	}
	if ok, _ := l.Allow(1); ok {
		t.Fatal("second request of key 1 allowed with burst 1")
	}
	if ok, _ := l.Allow(2); !ok {
		t.Fatal("key 2 refused because of key 1")
	}
}

func TestSharedDebtCountsAgainstTheBucket(t *testing.T) {
	l, _ := newTestLimiter(t, time.Minute, 3, 100)
	// Two tokens were spent on another instance: one is left here.
	if ok, _ := l.AllowShared(7, 2*time.Minute); !ok {
		t.Fatal("third token refused")
	}
	ok, retry := l.AllowShared(7, 2*time.Minute)
	if ok || retry != time.Minute {
		t.Fatalf("fourth token: Allow = %v, %v; want false, 1m", ok, retry)
	}
}

func TestRefundReturnsTheToken(t *testing.T) {
	l, _ := newTestLimiter(t, time.Minute, 1, 100)
	l.Allow(9)
	l.Refund(9)
	if ok, _ := l.Allow(9); !ok {
		t.Fatal("refunded token not available")
	}
	l.Refund(10) // an unknown key is a no-op
	if l.Len() != 1 {
		t.Fatalf("Refund of an unknown key tracked it: Len = %d", l.Len())
	}
}

func TestEvictsLeastRecentlySeenFirst(t *testing.T) {
	l, _ := newTestLimiter(t, time.Minute, 1, 3)
	for _, k := range []uint64{1, 2, 3} {
		l.Allow(k)
	}
	l.Allow(1) // 1 is now the most recent; 2 the least
	l.Allow(4) // evicts 2
	if got := l.Oldest(3); !equal(got, []uint64{3, 1, 4}) {
		t.Fatalf("order after evicting = %v, want [3 1 4]", got)
	}
	// 2 was forgotten, so it comes back with a full bucket and evicts 3.
	if ok, _ := l.Allow(2); !ok {
		t.Fatal("evicted key did not start with a full bucket")
	}
	if got := l.Oldest(3); !equal(got, []uint64{1, 4, 2}) {
		t.Fatalf("order = %v, want [1 4 2]", got)
	}
	if ok, _ := l.Allow(1); ok {
		t.Fatal("key 1 should still be tracked with an empty bucket")
	}
}

func TestSweepForgetsOnlyFullBuckets(t *testing.T) {
	l, clock := newTestLimiter(t, time.Minute, 2, 100)
	l.Allow(1) // half full, full again at +1m
	l.Allow(2) // same
	l.Allow(2) // empty, full again at +2m
	clock.advance(time.Minute)
	if n := l.Sweep(); n != 1 || l.Len() != 1 {
		t.Fatalf("Sweep removed %d, Len = %d; want 1 and 1", n, l.Len())
	}
	if ok, _ := l.Allow(2); !ok {
		t.Fatal("key 2 should have one token after a minute")
	}
	if ok, _ := l.Allow(2); ok {
		t.Fatal("sweep forgot key 2's debt")
	}
	// Freed slots are reused.
	clock.advance(time.Hour)
	l.Sweep()
	for k := uint64(10); k < 20; k++ {
		l.Allow(k)
	}
	if l.Len() != 10 {
		t.Fatalf("Len = %d after reusing slots, want 10", l.Len())
	}
}

func TestEachListsOnlyBucketsThatAreNotFull(t *testing.T) {
	l, clock := newTestLimiter(t, time.Minute, 1, 100)
	l.Allow(1)
	clock.advance(2 * time.Minute)
	l.Allow(2)
	got := map[uint64]int64{}
	l.Each(func(k uint64, tat int64) { got[k] = tat })
	if len(got) != 1 || got[2] != l.Now()+int64(time.Minute) {
		t.Fatalf("Each = %v, want only key 2 at now+1m", got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"zero interval", Config{Interval: 0, Burst: 1, MaxKeys: 1}},
		{"zero burst", Config{Interval: time.Second, Burst: 0, MaxKeys: 1}},
		{"zero max keys", Config{Interval: time.Second, Burst: 1, MaxKeys: 0}},
		{"too many keys", Config{Interval: time.Second, Burst: 1, MaxKeys: maxSlots + 1}},
		{"overflowing burst", Config{Interval: time.Hour, Burst: 1 << 40, MaxKeys: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Fatalf("New(%+v) succeeded", tt.cfg)
			}
		})
	}
}

// TestFloodOfRandomKeysStaysWithinMaxKeysAndMemory is the memory bound of
// issue 4: 2M random keys against max 1M keep exactly 1M tracked, at no more
// than 128 bytes of heap in use per key. It runs under -race too (the race
// detector's shadow memory is outside the Go heap, so HeapInuse is the same
// measure), taking a few seconds there.
func TestFloodOfRandomKeysStaysWithinMaxKeysAndMemory(t *testing.T) {
	const maxKeys, flood, bound = 1_000_000, 2_000_000, 128
	before := heapInUse()
	l, _ := newTestLimiter(t, time.Minute, 3, maxKeys)
	rng := rand.New(rand.NewPCG(1, 2))
	for range flood {
		l.Allow(rng.Uint64())
	}
	if n := l.Len(); n != maxKeys {
		t.Fatalf("tracked keys = %d after %d random keys, want %d", n, flood, maxKeys)
	}
	perKey := float64(heapInUse()-before) / float64(l.Len())
	t.Logf("heap in use per tracked key: %.1f bytes", perKey)
	if perKey > bound {
		t.Fatalf("heap in use per tracked key = %.1f bytes, want <= %d", perKey, bound)
	}
	runtime.KeepAlive(l)
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func TestConcurrentAllowKeepsEachBucketExact(t *testing.T) {
	l, _ := newTestLimiter(t, time.Hour, 5, 10_000)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := map[uint64]int{}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[uint64]int{}
			for i := range 2000 {
				k := uint64((i + g) % 100)
				if ok, _ := l.Allow(k); ok {
					local[k]++
				}
			}
			mu.Lock()
			for k, n := range local {
				allowed[k] += n
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for k := range uint64(100) {
		if allowed[k] != 5 {
			t.Fatalf("key %d allowed %d times, want exactly the burst 5", k, allowed[k])
		}
	}
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestTrackedKeysMatchAnLRUModel drives random requests, sweeps and
// evictions through a small limiter and compares what it tracks, in order,
// with a plain slice model of least-recently-seen order.
func TestTrackedKeysMatchAnLRUModel(t *testing.T) {
	const capacity = 50
	l, clock := newTestLimiter(t, time.Second, 1, capacity)
	rng := rand.New(rand.NewPCG(5, 6))
	var model []uint64 // least recently seen first
	tats := map[uint64]int64{}
	for step := range 20_000 {
		if rng.IntN(100) == 0 {
			clock.advance(time.Duration(rng.IntN(3)) * time.Second)
			l.Sweep()
			kept := model[:0]
			for _, k := range model {
				if tats[k] > clock.read() {
					kept = append(kept, k)
				} else {
					delete(tats, k)
				}
			}
			model = kept
			continue
		}
		// Keys share low bits so that they crowd the same index positions,
		// and some share the hash bits the index keeps as a tag.
		id := uint64(rng.IntN(200))
		k := id<<6 | (id%3)<<40
		ok, _ := l.Allow(k)
		if i := indexOf(model, k); i >= 0 {
			model = append(model[:i], model[i+1:]...)
		} else if len(model) == capacity {
			delete(tats, model[0])
			model = model[1:]
		}
		model = append(model, k)
		if tat, seen := tats[k]; !seen || tat <= clock.read() {
			if !ok {
				t.Fatalf("step %d: key %d with a full bucket refused", step, k)
			}
			tats[k] = clock.read() + int64(time.Second)
		} else if ok {
			t.Fatalf("step %d: key %d with an empty bucket allowed", step, k)
		}
		if got := l.Oldest(capacity + 1); !equal(got, model) {
			t.Fatalf("step %d: tracked %v, model %v", step, got, model)
		}
		if l.Len() != len(model) {
			t.Fatalf("step %d: Len = %d, model has %d", step, l.Len(), len(model))
		}
	}
}

func indexOf(keys []uint64, k uint64) int {
	for i, x := range keys {
		if x == k {
			return i
		}
	}
	return -1
}

// allowedInARow counts the requests key is allowed before its first refusal
// (at most 100), without moving the clock.
func allowedInARow(l *Limiter, key uint64) int {
	for n := range 100 {
		if ok, _ := l.Allow(key); !ok {
			return n
		}
	}
	return 100
}

func TestCarryKeepsWhatEachKeyOwesAtTheNewSettings(t *testing.T) {
	// Before: burst 3, one token a minute. Key 1 spent all 3, key 2 spent
	// 1, key 3 was never seen.
	tests := []struct {
		name         string
		interval     time.Duration
		burst        int
		wantA, wantB int
		wantC        int
		wantRetryOfA time.Duration
	}{
		{"same settings", time.Minute, 3, 0, 2, 3, time.Minute},
		{"slower rate: the debt is repaid at it", 2 * time.Minute, 3, 0, 2, 3, 2 * time.Minute},
		{"smaller burst: the debt is capped at an empty bucket", time.Minute, 1, 0, 0, 1, time.Minute},
		{"larger burst: the spent tokens stay spent", time.Minute, 5, 2, 4, 5, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev, clock := newTestLimiter(t, time.Minute, 3, 100)
			for range 3 {
				prev.Allow(1)
			}
			prev.Allow(2)
			next, err := New(Config{Interval: tt.interval, Burst: tt.burst, MaxKeys: 100, Clock: prev.Clock()})
			if err != nil {
				t.Fatal(err)
			}
			next.Carry(prev)
			if tt.wantRetryOfA > 0 {
				if ok, retry := next.Allow(1); ok || retry != tt.wantRetryOfA {
					t.Fatalf("key 1: allowed %v, retry %v; want refused, retry %v", ok, retry, tt.wantRetryOfA)
				}
			}
			got := [3]int{allowedInARow(next, 1), allowedInARow(next, 2), allowedInARow(next, 3)}
			if want := [3]int{tt.wantA, tt.wantB, tt.wantC}; got != want {
				t.Fatalf("requests allowed in a row for keys 1, 2, 3: %v, want %v", got, want)
			}
			clock.advance(tt.interval)
			if ok, _ := next.Allow(1); !ok {
				t.Fatal("key 1 not refilled one interval later")
			}
		})
	}
}

func TestCarryFollowsTheEvictionOrderAndTheNewBound(t *testing.T) {
	prev, _ := newTestLimiter(t, time.Minute, 1, 10)
	for k := uint64(1); k <= 5; k++ {
		prev.Allow(k)
	}
	next, err := New(Config{Interval: time.Minute, Burst: 1, MaxKeys: 3, Clock: prev.Clock()})
	if err != nil {
		t.Fatal(err)
	}
	next.Carry(prev)
	if next.Len() != 3 {
		t.Fatalf("%d keys carried, want the new bound 3", next.Len())
	}
	if got := next.Oldest(3); !equal(got, []uint64{3, 4, 5}) {
		t.Fatalf("least recently seen first: %v, want [3 4 5] (the most recent kept, in order)", got)
	}
}

func TestCeilingCarryKeepsTheSchedule(t *testing.T) {
	clock := &fakeClock{}
	prev, err := NewCeiling(100*time.Millisecond, time.Second, clock.read)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		prev.Reserve()
	}
	next, err := NewCeiling(100*time.Millisecond, time.Second, prev.Clock())
	if err != nil {
		t.Fatal(err)
	}
	next.Carry(prev)
	if ok, wait := next.Reserve(); !ok || wait != 300*time.Millisecond {
		t.Fatalf("first reservation after the carry: %v, %v; want true, 300ms", ok, wait)
	}
}
