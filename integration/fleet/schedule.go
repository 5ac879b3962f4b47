package fleet

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// schedule hands clients to workers when their next heartbeat is due.
// It is one min-heap of (time, client index), 16 bytes per client, driven
// by one timer: 100,000 clients cost 1.6 MB here, not 100,000 sleeping
// goroutines.
type schedule struct {
	mu   sync.Mutex
	due  dueHeap
	wake chan struct{} // an earlier entry arrived
}

type dueEntry struct {
	at  int64 // unix nanoseconds
	idx int32
}

type dueHeap []dueEntry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueEntry)) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func newSchedule(capacity int) *schedule {
	return &schedule{due: make(dueHeap, 0, capacity), wake: make(chan struct{}, 1)}
}

// add schedules client idx at t.
func (s *schedule) add(idx int32, t time.Time) {
	at := t.UnixNano()
	s.mu.Lock()
	heap.Push(&s.due, dueEntry{at: at, idx: idx})
	first := s.due[0].idx == idx && s.due[0].at == at
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// next pops the earliest entry if it is due, or says how long to wait.
func (s *schedule) next(now int64) (e dueEntry, wait time.Duration, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.due) == 0 {
		return dueEntry{}, time.Hour, false
	}
	if s.due[0].at <= now {
		return heap.Pop(&s.due).(dueEntry), 0, true
	}
	return dueEntry{}, time.Duration(s.due[0].at - now), false
}

// run sends due entries to out until ctx ends. A send blocks while every
// worker is busy: an overloaded fleet runs late (the lag is measured), it
// does not pile up goroutines.
func (s *schedule) run(ctx context.Context, out chan<- dueEntry) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		e, wait, ok := s.next(time.Now().UnixNano())
		if ok {
			select {
			case out <- e:
			case <-ctx.Done():
				return
			}
			continue
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-s.wake:
		case <-ctx.Done():
			return
		}
	}
}
