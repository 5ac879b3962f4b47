package limiter

import (
	"sync"
	"testing"
	"time"
)

func TestCeilingSpacesAdmissionsAndRefusesBeyondMaxWait(t *testing.T) {
	clock := &fakeClock{}
	c, err := NewCeiling(100*time.Millisecond, 250*time.Millisecond, clock.read)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		ok   bool
		wait time.Duration
	}{
		{true, 0},
		{true, 100 * time.Millisecond},
		{true, 200 * time.Millisecond},
		{false, 300 * time.Millisecond}, // would wait longer than 250ms
		{false, 300 * time.Millisecond}, // a refusal claims nothing
	}
	for i, w := range want {
		ok, wait := c.Reserve()
		if ok != w.ok || wait != w.wait {
			t.Fatalf("reservation %d = %v, %v; want %v, %v", i, ok, wait, w.ok, w.wait)
		}
	}
	clock.advance(time.Second)
	if ok, wait := c.Reserve(); !ok || wait != 0 {
		t.Fatalf("after the queue drained: %v, %v; want true, 0", ok, wait)
	}
}

func TestCeilingConcurrentReservationsNeverShareASlot(t *testing.T) {
	clock := &fakeClock{}
	c, err := NewCeiling(time.Millisecond, time.Second, clock.read)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[time.Duration]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				if ok, wait := c.Reserve(); ok {
					mu.Lock()
					if seen[wait] {
						t.Errorf("slot %v handed out twice", wait)
					}
					seen[wait] = true
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(seen) != 1001 { // slots 0, 1ms, ... 1000ms
		t.Fatalf("%d slots handed out, want 1001 (max wait / interval + 1)", len(seen))
	}
}

func TestCeilingWaitStopsWhenTheClientLeaves(t *testing.T) {
	c, err := NewCeiling(time.Second, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	result := make(chan error)
	go func() { result <- c.Wait(time.Minute, done) }()
	close(done)
	select {
	case err := <-result:
		if err != ErrGone {
			t.Fatalf("Wait after the client left = %v, want ErrGone", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return when the client left")
	}
}

func TestNewCeilingRejectsBadConfig(t *testing.T) {
	if _, err := NewCeiling(0, time.Second, nil); err == nil {
		t.Fatal("zero interval accepted")
	}
	if _, err := NewCeiling(time.Second, -1, nil); err == nil {
		t.Fatal("negative max wait accepted")
	}
}

func TestCeilingWaiterWakingLongAfterItsSlotStillGoesOn(t *testing.T) {
	tests := []struct {
		name string
		jump time.Duration
	}{
		{"on time", 0},
		{"within one interval", 80 * time.Millisecond},
		{"a starved host", time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{}
			c, err := NewCeiling(100*time.Millisecond, time.Second, clock.read)
			if err != nil {
				t.Fatal(err)
			}
			// The fake clock stands still during the real 5ms timer, then
			// jumps as a starved process would see it.
			go func() {
				time.Sleep(time.Millisecond)
				clock.advance(tt.jump)
			}()
			if err := c.Wait(5*time.Millisecond, nil); err != nil {
				t.Fatalf("Wait = %v, want nil: a late wake is the pacer's to space, not a refusal", err)
			}
		})
	}
}

func TestCeilingWaiterWhoseClientLeftIsGone(t *testing.T) {
	c, err := NewCeiling(100*time.Millisecond, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	close(done)
	if err := c.Wait(time.Hour, done); err != ErrGone {
		t.Fatalf("Wait = %v, want ErrGone", err)
	}
}

func TestCeilingReserveBehindCountsTheBacklogAgainstMaxWait(t *testing.T) {
	clock := &fakeClock{}
	c, err := NewCeiling(100*time.Millisecond, time.Second, clock.read)
	if err != nil {
		t.Fatal(err)
	}
	if ok, wait := c.ReserveBehind(900 * time.Millisecond); !ok || wait != 0 {
		t.Fatalf("first slot behind 900ms: %v, %v; want admitted, no wait", ok, wait)
	}
	// The next slot is 100ms away: with 950ms queued behind it, 1050ms.
	if ok, wait := c.ReserveBehind(950 * time.Millisecond); ok || wait != 1050*time.Millisecond {
		t.Fatalf("second slot behind 950ms: %v, %v; want refused after 1.05s", ok, wait)
	}
	if ok, wait := c.Reserve(); !ok || wait != 100*time.Millisecond {
		t.Fatalf("the refusal claimed the slot: Reserve = %v, %v; want admitted in 100ms", ok, wait)
	}
}
