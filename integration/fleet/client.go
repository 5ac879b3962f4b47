package fleet

import (
	"math/rand/v2"
	"time"
)

// client is one simulated endpoint. Only the worker running its heartbeat
// touches it (the schedule holds one entry per client), so it needs no lock;
// what the summary reads lives in the atomic counters.
type client struct {
	settings      *Settings // shared with every client holding the same list
	hostID        string
	profileSerial string // interned
	sylinkSerial  string // interned
	contentRev    string // interned; the real wire's definitions revision
	seq           uint64 // requests sent, in the real wire's query
	idx           int32
	streak        uint16 // heartbeats in a row with nothing usable
	refusedStreak uint16 // index requests in a row refused (429, 503)
	everStarved   bool
	state         clientState
	tls10         bool
	onPlaintext   bool
	onNewAnchor   bool
	everOrphaned  bool
	everDegraded  bool
}

// outcome is what one heartbeat got, from best to worst.
type outcome uint8

const (
	outcomeOK       outcome = iota // everything needed arrived and verified
	outcomeLimited                 // told to come back later (429, 503 + Retry-After)
	outcomeDegraded                // index answered, a download failed
	outcomeUnusable                // nothing usable: no index, or a bad signature
)

// result is one heartbeat's outcome and what it means for the next one.
type result struct {
	outcome    outcome
	retryAfter time.Duration // from the server; the next heartbeat waits at least this
	accelerate bool          // index failed or settings changed: come back soon
}

// worse combines two results of the same heartbeat.
func worse(a, b result) result {
	if b.outcome > a.outcome {
		a.outcome = b.outcome
	}
	a.retryAfter = max(a.retryAfter, b.retryAfter)
	a.accelerate = a.accelerate || b.accelerate
	return a
}

// heartbeat runs one heartbeat of c and returns the delay to the next.
func (f *Fleet) heartbeat(c *client, idx int32, rng *rand.Rand) time.Duration {
	r := f.proto.beat(f, c, idx)
	f.count.heartbeats.Add(1)
	f.settle(c, r.outcome)
	next := f.interval
	if f.randomize > 0 {
		next += time.Duration(rng.Int64N(int64(f.randomize) + 1))
	}
	if r.accelerate || (f.cfg.Wire == WireReal && r.outcome != outcomeOK) {
		next = time.Duration(rng.Int64N(int64(f.accel) + 1))
	}
	return max(next, r.retryAfter)
}

// settle moves c to the state its latest heartbeat puts it in.
func (f *Fleet) settle(c *client, o outcome) {
	next := stateOnline
	switch o {
	case outcomeDegraded:
		c.streak = 0
		next = stateDegraded
		if !c.everDegraded {
			c.everDegraded = true
			f.count.everDegraded.Add(1)
		}
	case outcomeUnusable:
		if c.streak < ^uint16(0) {
			c.streak++
		}
		next = stateFailing
		if int(c.streak) >= f.cfg.OrphanAfter {
			next = stateOrphaned
			if !c.everOrphaned {
				c.everOrphaned = true
				f.count.everOrphaned.Add(1)
			}
		}
	default:
		c.streak = 0
	}
	if next != c.state {
		f.count.states[c.state].Add(-1)
		f.count.states[next].Add(1)
		c.state = next
	}
}

// adopt makes s the client's server list and keeps the anchor and
// plaintext counts right.
func (f *Fleet) adopt(c *client, s *Settings) {
	c.settings = s
	plain := s.OnPlaintext()
	if plain != c.onPlaintext {
		c.onPlaintext = plain
		f.count.onPlaintext.Add(delta(plain))
	}
	moved := len(s.anchors) > 0 && !s.sharesAnchor(f.start)
	if moved != c.onNewAnchor {
		c.onNewAnchor = moved
		f.count.onNewAnchor.Add(delta(moved))
	}
	f.count.syLinkUpdates.Add(1)
}

func delta(up bool) int64 {
	if up {
		return 1
	}
	return -1
}
