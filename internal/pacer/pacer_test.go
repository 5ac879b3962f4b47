package pacer

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// sendTimes starts n waiters at once on p and returns when each was let
// through, sorted.
func sendTimes(t *testing.T, p *Pacer, n int) []time.Duration {
	t.Helper()
	start := time.Now()
	times := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := p.Wait(context.Background()); err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			times[i] = time.Since(start)
		})
	}
	wg.Wait()
	sort.Slice(times, func(a, b int) bool { return times[a] < times[b] })
	return times
}

// busiest returns the most sends in any window of length w.
func busiest(times []time.Duration, w time.Duration) int {
	most, lo := 0, 0
	for hi := range times {
		for times[hi]-times[lo] >= w {
			lo++
		}
		most = max(most, hi-lo+1)
	}
	return most
}

func TestPacerNeverLetsMoreThanOnePerIntervalThroughInAnyWindow(t *testing.T) {
	// Above 10 ms, a late send keeps the schedule only within one
	// interval: a window holds at most one more than its intervals, plus
	// the one at its closed end, plus one for the stamps, taken when a
	// loaded host runs the goroutine after Wait returned.
	const interval, n = 12 * time.Millisecond, 40
	p, err := New(interval, nil)
	if err != nil {
		t.Fatal(err)
	}
	times := sendTimes(t, p, n)
	const window = 10 * interval
	if got, limit := busiest(times, window), int(window/interval)+3; got > limit {
		t.Errorf("busiest %v window: %d sends, want at most %d", window, got, limit)
	}
	if span := times[len(times)-1] - times[0]; span < (n-2)*interval {
		t.Errorf("%d sends over %v, want at least ~%v", n, span, (n-1)*interval)
	}
}

func TestPacerWakingLateStartsANewScheduleInsteadOfCatchingUp(t *testing.T) {
	var now atomic.Int64
	p, err := New(10*time.Millisecond, now.Load)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := p.Wait(ctx); err != nil { // due: 10ms
		t.Fatal(err)
	}
	now.Store(int64(time.Second)) // a long stall
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if want := int64(time.Second + 10*time.Millisecond); p.due.Load() != want {
		t.Errorf("after a late send the next is due at %v, want %v (one interval after it, not at once)", time.Duration(p.due.Load()), time.Duration(want))
	}
	now.Store(int64(time.Second + 19*time.Millisecond)) // 9ms late: within the 10ms slack
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if want := int64(time.Second + 20*time.Millisecond); p.due.Load() != want {
		t.Errorf("a send slightly late keeps the schedule: next due %v, want %v", time.Duration(p.due.Load()), time.Duration(want))
	}
}

func TestPacerWaiterWhoseClientLeftDoesNotSendAndFreesItsTurn(t *testing.T) {
	p, err := New(time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	gone := errors.New("client went away")
	for range 3 { // the turn must be given back each time
		ctx, cancel := context.WithCancelCause(context.Background())
		time.AfterFunc(5*time.Millisecond, func() { cancel(gone) })
		if err := p.Wait(ctx); !errors.Is(err, gone) {
			t.Fatalf("Wait = %v, want %v", err, gone)
		}
	}
	if n := p.Waiting(); n != 0 {
		t.Errorf("%d still waiting", n)
	}
}

func TestPacerSetRateChangesTheSpacingOfLaterSends(t *testing.T) {
	p, err := New(time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.SetRate(1000); err != nil {
		t.Fatal(err)
	}
	if got := p.Interval(); got != time.Millisecond {
		t.Errorf("Interval after SetRate(1000) = %v, want 1ms", got)
	}
	for _, bad := range []float64{0, -1} {
		if err := p.SetRate(bad); err == nil {
			t.Errorf("SetRate(%v) accepted", bad)
		}
	}
	if err := p.SetInterval(0); err == nil {
		t.Error("SetInterval(0) accepted")
	}
}

func TestPacerBacklogIsAnIntervalPerWaitingRequest(t *testing.T) {
	p, err := New(10*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := p.Backlog(); got != 0 {
		t.Errorf("nobody waiting: backlog %v, want 0 (the next send's spacing is the admission's)", got)
	}
	p.waiting.Add(3)
	if got, want := p.Backlog(), 30*time.Millisecond; got != want {
		t.Errorf("backlog with 3 waiting: %v, want %v", got, want)
	}
}
