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
// The Ceiling decides admission; a waiter that wakes long after its slot
// (a starved host) still goes on, and internal/pacer, where the request
// is written to the manager, keeps late ones from leaving together.
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
	return c.ReserveBehind(0)
}

// ReserveBehind is Reserve for a request that will, after its slot, also
// queue behind backlog (requests released earlier and not yet sent, see
// internal/pacer): the slot is admitted only if its wait plus backlog is
// within maxWait. The returned wait is the slot's alone; when refused, the
// duration includes backlog.
func (c *Ceiling) ReserveBehind(backlog time.Duration) (bool, time.Duration) {
	for {
		now := c.clock()
		next := c.next.Load()
		start := max(next, now)
		wait := start - now
		if wait+int64(backlog) > c.maxWait {
			return false, time.Duration(wait) + backlog
		}
		if c.next.CompareAndSwap(next, start+c.interval.Load()) {
			return true, time.Duration(wait)
		}
	}
}

// ErrGone means Wait's done was closed: the client went away.
var ErrGone = errors.New("client went away while waiting")

// Wait blocks for d, the wait Reserve returned. It fails with ErrGone when
// done is closed first. Waking late is not an error: the admission was
// decided by Reserve, and the spacing at the manager is the pacer's.
func (c *Ceiling) Wait(d time.Duration, done <-chan struct{}) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-done:
		return ErrGone
	}
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
