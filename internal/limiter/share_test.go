package limiter

import (
	"testing"
	"time"
)

func TestChargeSpendsTheSharedBucketAsRequestsAtTheirTime(t *testing.T) {
	const key = 42
	tests := []struct {
		name     string
		local    int           // tokens taken here first
		tokens   int           // charged from elsewhere
		ago      time.Duration // how long before now they were spent
		allowed  int           // requests then allowed here
		tracked  bool          // whether the charge created a key
		interval time.Duration
	}{
		{name: "burst spent elsewhere just now", tokens: 3, allowed: 0, tracked: true},
		{name: "two spent elsewhere leaves one", tokens: 2, allowed: 1, tracked: true},
		{name: "one here and two elsewhere", local: 1, tokens: 2, allowed: 0, tracked: true},
		{name: "spent a minute ago: one token back", tokens: 3, ago: time.Minute, allowed: 1, tracked: true},
		{name: "spent long ago: nothing owed, no key", tokens: 3, ago: time.Hour, allowed: 3, tracked: false},
		{name: "more than a burst is capped at an empty bucket", tokens: 200, allowed: 0, tracked: true},
		{name: "zero tokens charge nothing", tokens: 0, allowed: 3, tracked: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, clock := newTestLimiter(t, time.Minute, 3, 100)
			for range tt.local {
				if ok, _ := l.Allow(key); !ok {
					t.Fatal("a local request was refused")
				}
			}
			l.Charge(key, tt.tokens, clock.read()-int64(tt.ago))
			if got := l.Len() > 0; got != tt.tracked {
				t.Fatalf("tracked = %v, want %v", got, tt.tracked)
			}
			allowed := 0
			for range 4 {
				if ok, _ := l.Allow(key); ok {
					allowed++
				}
			}
			if allowed != tt.allowed {
				t.Fatalf("allowed %d requests after the charge, want %d", allowed, tt.allowed)
			}
		})
	}
}

func TestChargeCappedAtAnEmptyBucketRefillsAfterOneBurst(t *testing.T) {
	l, clock := newTestLimiter(t, time.Minute, 3, 100)
	l.Charge(7, 200, clock.read())
	clock.advance(3 * time.Minute)
	for i := range 3 {
		if ok, _ := l.Allow(7); !ok {
			t.Fatalf("request %d refused after a full refill", i)
		}
	}
}

func TestJournalCountsSpendsAndTakeEmptiesIt(t *testing.T) {
	j := NewJournal(1 << 10)
	j.Add(1, 10)
	j.Add(1, 20)
	j.Add(2, 15)
	j.Add(3, 16)
	j.Remove(3)
	j.Add(2, 30)
	j.Remove(2)
	got := map[uint64]Spend{}
	if dropped := j.Take(func(k uint64, sp Spend) { got[k] = sp }); dropped != 0 {
		t.Fatalf("dropped %d", dropped)
	}
	want := map[uint64]Spend{1: {2, 20}, 2: {1, 30}}
	if len(got) != len(want) || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("took %v, want %v", got, want)
	}
	if j.Len() != 0 {
		t.Fatalf("%d keys left after Take", j.Len())
	}
	j.Restore(1, Spend{2, 20})
	j.Add(1, 40)
	got = map[uint64]Spend{}
	j.Take(func(k uint64, sp Spend) { got[k] = sp })
	if got[1] != (Spend{3, 40}) {
		t.Fatalf("restored and added: %v, want {3 40}", got[1])
	}
}

func TestJournalIsBoundedAndCountsWhatItDrops(t *testing.T) {
	const bound = 64 * 4 // four keys per shard
	j := NewJournal(bound)
	for k := range uint64(10_000) {
		j.Add(k, 1)
	}
	if n := j.Len(); n > bound {
		t.Fatalf("journal holds %d keys, bound %d", n, bound)
	}
	taken := 0
	dropped := j.Take(func(uint64, Spend) { taken++ })
	if taken+dropped != 10_000 {
		t.Fatalf("taken %d + dropped %d, want 10000", taken, dropped)
	}
	for k := range uint64(10_000) {
		j.Restore(k, Spend{1, 1})
	}
	if n := j.Len(); n > bound {
		t.Fatalf("after Restore the journal holds %d keys, bound %d", n, bound)
	}
}

func TestShareIntervalDividesTheRateAmongLiveInstances(t *testing.T) {
	tests := []struct {
		live int
		want time.Duration
	}{{-1, 25 * time.Millisecond}, {0, 25 * time.Millisecond}, {1, 25 * time.Millisecond}, {3, 75 * time.Millisecond}}
	for _, tt := range tests {
		if got := ShareInterval(25*time.Millisecond, tt.live); got != tt.want {
			t.Errorf("ShareInterval(25ms, %d) = %v, want %v", tt.live, got, tt.want)
		}
	}
}

func TestCeilingSetIntervalSpacesLaterReservations(t *testing.T) {
	clock := &fakeClock{}
	c, err := NewCeiling(10*time.Millisecond, time.Second, clock.read)
	if err != nil {
		t.Fatal(err)
	}
	if ok, wait := c.Reserve(); !ok || wait != 0 {
		t.Fatalf("first reservation: %v %v", ok, wait)
	}
	c.SetInterval(30 * time.Millisecond)
	c.SetInterval(0) // ignored
	if ok, wait := c.Reserve(); !ok || wait != 10*time.Millisecond {
		t.Fatalf("second reservation keeps the slot reserved at the old rate: %v %v", ok, wait)
	}
	if ok, wait := c.Reserve(); !ok || wait != 40*time.Millisecond {
		t.Fatalf("third reservation waits 10ms + 30ms, got %v %v", ok, wait)
	}
	if c.Interval() != 30*time.Millisecond {
		t.Fatalf("Interval() = %v", c.Interval())
	}
}
