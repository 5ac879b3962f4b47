// Package limiter is the core of heartbeat_limit: a token bucket per client
// key with a hard bound on tracked keys, and a global ceiling with a bounded
// wait. It does not import Caddy, so it can be tested and benchmarked alone.
//
// Each bucket is kept as one number, its theoretical arrival time (GCRA, the
// generic cell rate algorithm): a bucket of burst B refilling one token per
// interval T is full when tat <= now, and a request at now is allowed when
// max(tat, now)+T-now <= B*T. This is exactly a token bucket, in integer
// nanoseconds, in 8 bytes.
//
// Memory per tracked key is a 24-byte slab entry {hash, tat, lru prev, lru
// next} plus 16 to 32 bytes of open-addressing index: about 42 bytes at
// 1M keys.
// Neither holds pointers, so the garbage collector does not scan them.
package limiter

import (
	"errors"
	"fmt"
	"time"
)

// Config sets a Limiter's bucket and bound.
type Config struct {
	// Interval is the time in which one token is refilled (the rate is
	// one per Interval).
	Interval time.Duration
	// Burst is the bucket's capacity: how many requests a key that was
	// idle may make back to back.
	Burst int
	// MaxKeys bounds the keys tracked; the least recently seen is evicted
	// when a new key arrives at the bound.
	MaxKeys int
	// Clock returns the current time in nanoseconds on a monotonic scale.
	// Nil means time elapsed since New.
	Clock func() int64
}

// Limiter holds a token bucket per key. It is safe for concurrent use.
type Limiter struct {
	interval int64
	burst    int64
	clock    func() int64
	shards   []shard
	mask     uint64
	bound    keyBound
}

// New checks cfg and returns an empty Limiter. Memory is taken as keys
// arrive, never preallocated for MaxKeys.
func New(cfg Config) (*Limiter, error) {
	if cfg.Interval <= 0 {
		return nil, fmt.Errorf("interval %v: must be positive", cfg.Interval)
	}
	if cfg.Burst < 1 {
		return nil, fmt.Errorf("burst %d: must be at least 1", cfg.Burst)
	}
	if cfg.MaxKeys < 1 || cfg.MaxKeys > maxSlots {
		return nil, fmt.Errorf("max keys %d: must be between 1 and %d", cfg.MaxKeys, maxSlots)
	}
	if int64(cfg.Burst) > int64(1<<62)/int64(cfg.Interval) {
		return nil, errors.New("burst times interval overflows")
	}
	clock := cfg.Clock
	if clock == nil {
		start := time.Now()
		clock = func() int64 { return int64(time.Since(start)) }
	}
	n := shardCount(cfg.MaxKeys)
	l := &Limiter{
		interval: int64(cfg.Interval),
		burst:    int64(cfg.Burst),
		clock:    clock,
		shards:   make([]shard, n),
		mask:     uint64(n - 1),
	}
	l.bound.max = int64(cfg.MaxKeys)
	for i := range l.shards {
		l.shards[i].init(&l.bound)
	}
	return l, nil
}

// shardCount spreads keys over up to 64 shards (a power of two) so that
// concurrent requests rarely share a lock. The bound on keys is global; at
// the bound a new key evicts the least recently seen key of its own shard,
// which, with at least 1024 keys per shard, is among the least recently
// seen overall.
func shardCount(maxKeys int) int {
	n := 1
	for n < 64 && maxKeys/(n*2) >= 1024 {
		n *= 2
	}
	return n
}

// Now returns the limiter's clock reading.
func (l *Limiter) Now() int64 { return l.clock() }

// Clock returns the limiter's clock, for a successor that takes over its
// buckets (Config.Clock, then Carry).
func (l *Limiter) Clock() func() int64 { return l.clock }

// Carry copies prev's buckets that are not full into l, for a limiter that
// replaces prev with new settings: each key keeps the requests it owes
// (its debt in tokens), repaid at l's rate and capped at l's burst (an
// empty bucket). Keys are inserted least recently seen first, so l's order
// of eviction follows prev's; past l's bound the oldest are evicted as
// usual. l must use prev's clock (see Clock) and not yet be in use.
func (l *Limiter) Carry(prev *Limiter) {
	now := l.clock()
	scale := float64(l.interval) / float64(prev.interval)
	for i := range prev.shards {
		ps := &prev.shards[i]
		ps.mu.Lock()
		for j := ps.slot(0).prev; j != 0; j = ps.slot(j).prev {
			e := ps.slot(j)
			if e.tat <= now {
				continue
			}
			debt := int64(min(float64(e.tat-now)*scale, float64(l.burst*l.interval)))
			s := &l.shards[e.hash&l.mask]
			s.mu.Lock()
			s.touch(e.hash, now).tat = now + debt
			s.mu.Unlock()
		}
		ps.mu.Unlock()
	}
}

// Allow takes a token from key's bucket. When the bucket is empty it
// returns false and how long until a token is available.
func (l *Limiter) Allow(key uint64) (bool, time.Duration) {
	return l.AllowShared(key, 0)
}

// AllowShared is Allow for a key that has also spent shared worth of tokens
// elsewhere (other instances in distributed mode): shared is added to the
// bucket's debt for this decision but not stored.
func (l *Limiter) AllowShared(key uint64, shared time.Duration) (bool, time.Duration) {
	now := l.clock()
	s := &l.shards[key&l.mask]
	s.mu.Lock()
	e := s.touch(key, now)
	start := max(e.tat, now)
	next := start + int64(shared) + l.interval
	if over := next - now - l.burst*l.interval; over > 0 {
		s.mu.Unlock()
		return false, time.Duration(over)
	}
	e.tat = start + l.interval
	s.mu.Unlock()
	return true, 0
}

// Refund returns the token a request took from key's bucket, for a request
// that was allowed here but rejected later (by the global ceiling).
func (l *Limiter) Refund(key uint64) {
	s := &l.shards[key&l.mask]
	s.mu.Lock()
	if _, i := s.find(key); i != 0 {
		s.slot(i).tat -= l.interval
	}
	s.mu.Unlock()
}

// Len returns the number of keys tracked.
func (l *Limiter) Len() int { return int(l.bound.tracked.Load()) }

// Sweep forgets keys whose bucket is full again: forgetting them loses
// nothing, since a key seen for the first time starts with a full bucket.
// It returns how many keys it removed.
func (l *Limiter) Sweep() int {
	now := l.clock()
	removed := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		removed += s.sweep(now)
		s.mu.Unlock()
	}
	return removed
}

// Each calls fn, in no particular order, for every key whose bucket is not
// full, with its theoretical arrival time on the limiter's clock. fn runs
// under a shard lock and must not call back into the Limiter.
func (l *Limiter) Each(fn func(key uint64, tat int64)) {
	now := l.clock()
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for j := s.slot(0).next; j != 0; j = s.slot(j).next {
			if e := s.slot(j); e.tat > now {
				fn(e.hash, e.tat)
			}
		}
		s.mu.Unlock()
	}
}

// Oldest returns up to n keys from the least recently seen on, for tests
// and diagnostics; with several shards the order is per shard.
func (l *Limiter) Oldest(n int) []uint64 {
	var keys []uint64
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for j := s.slot(0).prev; j != 0 && len(keys) < n; j = s.slot(j).prev {
			keys = append(keys, s.slot(j).hash)
		}
		s.mu.Unlock()
	}
	return keys
}
