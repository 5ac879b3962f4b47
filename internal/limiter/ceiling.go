package limiter

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Ceiling admits at most one request per interval across all clients,
// evenly spaced, so a manager behind it never sees more than its rate in
// any window. A request that would have to wait longer than maxWait for
// its slot is refused instead; the rest get a reserved slot and a wait.
// Slots are kept in real time too: a waiter that wakes long after its slot
// is refused rather than sent together with later ones.
// Reservations are bounded by maxWait/interval+1, and so are waiters.
type Ceiling struct {
	interval atomic.Int64 // SetInterval re-balances a cluster's share
	maxWait  int64
	clock    func() int64
	next     atomic.Int64 // the next free slot on the clock's scale
}

// NewCeiling returns a Ceiling admitting one request per interval with
// waits of at most maxWait. clock is as in Config; nil means time elapsed
// since NewCeiling.
func NewCeiling(interval, maxWait time.Duration, clock func() int64) (*Ceiling, error) {
	if interval <= 0 {
		return nil, fmt.Errorf("interval %v: must be positive", interval)
	}
	if maxWait < 0 {
		return nil, fmt.Errorf("max wait %v: must not be negative", maxWait)
	}
	if clock == nil {
		start := time.Now()
		clock = func() int64 { return int64(time.Since(start)) }
	}
	c := &Ceiling{maxWait: int64(maxWait), clock: clock}
	c.interval.Store(int64(interval))
	return c, nil
}

// Reserve claims the next free slot. When the slot is within maxWait it
// returns true and how long the caller must wait before going on; when it
// is not, it claims nothing and returns false and how long until a request
// would be admitted without waiting.
func (c *Ceiling) Reserve() (bool, time.Duration) {
	for {
		now := c.clock()
		next := c.next.Load()
		start := max(next, now)
		wait := start - now
		if wait > c.maxWait {
			return false, time.Duration(wait)
		}
		if c.next.CompareAndSwap(next, start+c.interval.Load()) {
			return true, time.Duration(wait)
		}
	}
}

// Errors of Wait.
var (
	// ErrLate means the caller woke long after its slot (a starved host
	// wakes many waiters at once); sending it now would crowd the manager,
	// so it must be rejected like a request that found no slot.
	ErrLate = errors.New("woke too late for the reserved slot")
	// ErrGone means done was closed: the client went away.
	ErrGone = errors.New("client went away while waiting")
)

// Wait blocks for d, the wait Reserve returned. It fails with ErrGone when
// done is closed first, and with ErrLate when it wakes more than one
// interval (at least 1ms) after d.
func (c *Ceiling) Wait(d time.Duration, done <-chan struct{}) error {
	if d <= 0 {
		return nil
	}
	deadline := c.clock() + int64(d)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-done:
		return ErrGone
	}
	if c.clock()-deadline > max(c.interval.Load(), int64(time.Millisecond)) {
		return ErrLate
	}
	return nil
}

// Clock returns the ceiling's clock, for a successor (NewCeiling, then
// Carry).
func (c *Ceiling) Clock() func() int64 { return c.clock }

// Carry takes over prev's schedule: the next free slot stays where prev
// has it, so a replaced ceiling admits no extra requests. c must use
// prev's clock and not yet be in use.
func (c *Ceiling) Carry(prev *Ceiling) {
	c.next.Store(prev.next.Load())
}

// Interval returns the spacing between admissions.
func (c *Ceiling) Interval() time.Duration { return time.Duration(c.interval.Load()) }
