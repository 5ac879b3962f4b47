package limiter

import (
	"sync"
	"time"
)

// What a cluster of limiters shares: each instance decides locally, notes
// what it spent in a Journal, hands the journal to the others every
// interval, and Charges what the others spent to its own buckets. The
// per-client limit of the cluster is then one token bucket per key, known
// to every instance within one exchange.

// Charge spends n tokens from key's bucket as requests made at time at (on
// the limiter's clock, possibly in the past) would have: tat becomes
// max(tat, at) + n×interval, capped at an empty bucket (now + burst×interval),
// since a shared bucket never owes more than its burst. A charge that leaves
// the bucket full (spends long repaid) neither creates nor refreshes a key.
func (l *Limiter) Charge(key uint64, n int, at int64) {
	if n <= 0 {
		return
	}
	now := l.clock()
	cost := min(int64(n), l.burst) * l.interval
	s := &l.shards[key&l.mask]
	s.mu.Lock()
	defer s.mu.Unlock()
	var tat int64
	if _, i := s.find(key); i != 0 {
		tat = s.slot(i).tat
	}
	next := min(max(tat, at)+cost, now+l.burst*l.interval)
	if next <= now || next <= tat {
		return
	}
	s.touch(key, now).tat = next
}

// Spend is what one key spent at this instance since the journal was last
// taken: how many tokens, and when the last one was taken (the limiter's
// clock).
type Spend struct {
	Tokens uint32
	Last   int64
}

// Journal records which keys spent tokens at this instance since it was
// last taken. It holds at most max keys: a key arriving when it is full is
// dropped (and counted by Take), so memory is bounded whatever clients
// send; the others then learn of that key's spend only from its next one.
type Journal struct {
	shards []journalShard
	mask   uint64
	max    int
}

type journalShard struct {
	mu    sync.Mutex
	spent map[uint64]Spend
	count int
	_     [40]byte // keep neighbouring shards' locks off this cache line
}

const journalShards = 64

// NewJournal returns an empty journal of at most maxKeys keys.
func NewJournal(maxKeys int) *Journal {
	j := &Journal{shards: make([]journalShard, journalShards), mask: journalShards - 1, max: max(1, maxKeys/journalShards)}
	for i := range j.shards {
		j.shards[i].spent = make(map[uint64]Spend)
	}
	return j
}

// Add notes one token taken from key's bucket at now.
func (j *Journal) Add(key uint64, now int64) {
	s := &j.shards[key&j.mask]
	s.mu.Lock()
	sp, ok := s.spent[key]
	if ok || len(s.spent) < j.max {
		sp.Tokens++
		sp.Last = now
		s.spent[key] = sp
	} else {
		s.count++
	}
	s.mu.Unlock()
}

// Remove takes back one token noted for key, for a request refunded after
// the global ceiling refused it.
func (j *Journal) Remove(key uint64) {
	s := &j.shards[key&j.mask]
	s.mu.Lock()
	if sp, ok := s.spent[key]; ok {
		if sp.Tokens <= 1 {
			delete(s.spent, key)
		} else {
			sp.Tokens--
			s.spent[key] = sp
		}
	}
	s.mu.Unlock()
}

// Take empties the journal and hands each noted key to fn, returning how
// many keys were dropped because it was full. fn runs without a lock held.
func (j *Journal) Take(fn func(key uint64, sp Spend)) (dropped int) {
	for i := range j.shards {
		s := &j.shards[i]
		s.mu.Lock()
		spent := s.spent
		dropped += s.count
		s.spent, s.count = make(map[uint64]Spend, len(spent)/2), 0
		s.mu.Unlock()
		for k, sp := range spent {
			fn(k, sp)
		}
	}
	return dropped
}

// Restore puts back what Take handed out and could not be delivered (the
// exchange failed), merged with what was noted since, within the bound.
func (j *Journal) Restore(key uint64, sp Spend) {
	s := &j.shards[key&j.mask]
	s.mu.Lock()
	cur, ok := s.spent[key]
	if ok || len(s.spent) < j.max {
		cur.Tokens += sp.Tokens
		cur.Last = max(cur.Last, sp.Last)
		s.spent[key] = cur
	}
	s.mu.Unlock()
}

// Len returns the number of keys noted.
func (j *Journal) Len() int {
	n := 0
	for i := range j.shards {
		s := &j.shards[i]
		s.mu.Lock()
		n += len(s.spent)
		s.mu.Unlock()
	}
	return n
}

// ShareInterval returns the spacing between one instance's admissions when
// a cluster of live instances shares a ceiling of one admission per
// clusterInterval: each admits clusterInterval×live apart, so together they
// admit at most the cluster's rate. live below 1 counts as 1.
func ShareInterval(clusterInterval time.Duration, live int) time.Duration {
	return clusterInterval * time.Duration(max(1, live))
}

// SetInterval changes the spacing of admissions from the next reservation
// on; slots already reserved keep their times, so a lower rate never lets
// a burst through.
func (c *Ceiling) SetInterval(d time.Duration) {
	if d > 0 {
		c.interval.Store(int64(d))
	}
}
