// Package pacer spaces the requests written to a manager: at most one per
// interval, measured when each request is about to be written, so a stall
// earlier in the gateway (a GC pause, a starved host) delays requests but
// never sends them together.
//
// heartbeat_limit decides admission (can a request get a slot within its
// max wait?) and hands its Pacer on with the request (VarKey); the
// legacy_tls transport calls Wait once it holds a connection, right before
// it writes.
package pacer

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// Pacer lets one request through per interval. Waiters queue in arrival
// order; only the first of them sleeps toward its send time, so however
// late it wakes, the next one still waits a full interval after it.
//
// A send that wakes at most an interval, or 10 ms, late (the larger) keeps
// the schedule: the next send is due one interval after the planned time,
// not the late one, so timer slack on a loaded host does not lower the
// rate. One that wakes later starts a new schedule from now: no catching
// up. Either way no second sees more than the rate plus 1 % (at least
// plus one) sends: each send is within that slack of a planned time, and
// planned times are an interval apart.
type Pacer struct {
	interval atomic.Int64
	clock    func() int64
	turn     chan struct{} // holds one token: the waiter allowed to sleep toward its send
	waiting  atomic.Int64

	due     atomic.Int64 // when the next send may go; written with turn held
	started bool         // guarded by turn
}

// keepSchedule is how late a send may wake and still keep the schedule
// when the interval is shorter: 1 % of a second, so at most 1 % more sends
// fall in any second.
const keepSchedule = int64(10 * time.Millisecond)

// New returns a Pacer letting one request through per interval. clock
// returns nanoseconds on any monotonic scale; nil means time since New.
func New(interval time.Duration, clock func() int64) (*Pacer, error) {
	if interval <= 0 {
		return nil, fmt.Errorf("pacer interval %v: must be positive", interval)
	}
	if clock == nil {
		start := time.Now()
		clock = func() int64 { return int64(time.Since(start)) }
	}
	p := &Pacer{clock: clock, turn: make(chan struct{}, 1)}
	p.interval.Store(int64(interval))
	return p, nil
}

// SetInterval changes the spacing; the send already due keeps its time,
// the ones after it follow the new spacing. It is safe to call while
// requests wait (a cluster-wide ceiling resizes this instance's share).
func (p *Pacer) SetInterval(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("pacer interval %v: must be positive", d)
	}
	p.interval.Store(int64(d))
	return nil
}

// SetRate is SetInterval for a rate in requests per second.
func (p *Pacer) SetRate(perSecond float64) error {
	if !(perSecond > 0) || math.IsInf(perSecond, 0) {
		return fmt.Errorf("pacer rate %v/s: must be positive and finite", perSecond)
	}
	return p.SetInterval(max(time.Duration(float64(time.Second)/perSecond), 1))
}

// Interval returns the current spacing.
func (p *Pacer) Interval() time.Duration { return time.Duration(p.interval.Load()) }

// Waiting returns how many requests are waiting for their turn.
func (p *Pacer) Waiting() int64 { return p.waiting.Load() }

// Backlog returns how long the requests already waiting need to be let
// through: an interval each. After a stall it is the time the pacer needs
// to catch up, which admission (limiter.Ceiling.ReserveBehind) counts
// against max_wait, so the queue stays bounded even when stalls recur.
// The spacing of the next send alone is not counted: the admission's own
// schedule already holds it.
func (p *Pacer) Backlog() time.Duration {
	return time.Duration(p.waiting.Load() * p.interval.Load())
}

// Wait returns when the caller may send, or the context's cause when it
// ends first (the caller must then not send).
func (p *Pacer) Wait(ctx context.Context) error {
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	select {
	case p.turn <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	defer func() { <-p.turn }()
	var timer *time.Timer
	for {
		interval := p.interval.Load()
		now := p.clock()
		due := p.due.Load()
		if !p.started || now >= due {
			if !p.started || now-due > max(interval, keepSchedule) {
				p.due.Store(now + interval)
			} else {
				p.due.Store(due + interval)
			}
			p.started = true
			if timer != nil {
				timer.Stop()
			}
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(time.Duration(due - now))
		} else {
			timer.Reset(time.Duration(due - now))
		}
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return context.Cause(ctx)
		}
	}
}

// VarKey is the Caddy request variable (http.vars) under which
// heartbeat_limit hands its Pacer to the transport. A variable, not a
// context value: setting it costs the allowed path no allocation.
const VarKey = "legacygate.pacer"
