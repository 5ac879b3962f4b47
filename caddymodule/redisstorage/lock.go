package redisstorage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bsm/redislock"
	"go.uber.org/zap"
)

// Locks are redislock's: a key "<prefix>:lock:<name>" set only if absent,
// holding a random token, with an expiry (lock_ttl). Only the token's
// holder refreshes or releases it; a holder that dies stops refreshing and
// its lock expires.

// lockPoll is how often a waiting Lock tries again.
const lockPoll = 100 * time.Millisecond

// heldLock is a lock this storage holds and refreshes.
type heldLock struct {
	lock *redislock.Lock
	stop chan struct{}
	done chan struct{}
}

func (h *heldLock) stopRefresh() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
}

func (s *Storage) lockKey(name string) string { return s.prefix + ":lock:" + name }

// Lock takes the lock for name, waiting while another holder has it,
// until ctx ends. A Redis error ends the wait at once.
func (s *Storage) Lock(ctx context.Context, name string) error {
	for {
		ok, err := s.tryLock(ctx, name)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			s.metrics.count("lock", resultCanceled)
			return fmt.Errorf("redis storage: waiting for lock %s: %w", name, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// TryLock takes the lock for name if no one holds it.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	return s.tryLock(ctx, name)
}

func (s *Storage) tryLock(ctx context.Context, name string) (bool, error) {
	if err := ctx.Err(); err != nil {
		s.metrics.count("lock", resultCanceled)
		return false, fmt.Errorf("redis storage: lock %s: %w", name, err)
	}
	lock, err := s.locker.Obtain(ctx, s.lockKey(name), s.lockTTL, nil)
	switch {
	case errors.Is(err, redislock.ErrNotObtained):
		s.metrics.count("lock", resultContended)
		return false, nil
	case err != nil:
		s.metrics.count("lock", resultError)
		return false, fmt.Errorf("redis storage: lock %s: %w", name, err)
	}
	s.metrics.count("lock", resultOK)
	h := &heldLock{lock: lock, stop: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	old := s.held[name]
	s.held[name] = h
	s.mu.Unlock()
	if old != nil {
		// Ours had expired (not refreshed in time) and was taken again.
		old.stopRefresh()
	}
	go s.refresh(name, h)
	return true, nil
}

// refresh extends the lock every third of its life while it is held. A
// lock found taken by someone else (it expired: Redis was unreachable for
// longer than lock_ttl) is logged and counted, not refreshed again.
func (s *Storage) refresh(name string, h *heldLock) {
	defer close(h.done)
	tick := time.NewTicker(s.lockTTL / 3)
	defer tick.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.lockTTL/3)
		err := h.lock.Refresh(ctx, s.lockTTL, nil)
		cancel()
		switch {
		case errors.Is(err, redislock.ErrNotObtained):
			s.metrics.count("refresh", resultLost)
			s.logger.Error("redis storage: a held lock expired before it could be refreshed; another holder may have it",
				zap.String("lock", name), zap.Duration("lock_ttl", s.lockTTL))
			return
		case err != nil:
			s.metrics.count("refresh", resultError)
			s.logger.Warn("redis storage: refreshing a held lock", zap.String("lock", name), zap.Error(err))
		default:
			s.metrics.count("refresh", resultOK)
		}
	}
}

// Unlock releases the lock for name if this storage holds it (by its
// token): a lock that expired and was taken by another holder is left to
// that holder, and reported as an error.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	h := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if h == nil {
		s.metrics.count("unlock", resultNotFound)
		return fmt.Errorf("redis storage: unlock %s: not held by this storage", name)
	}
	h.stopRefresh()
	err := h.lock.Release(ctx)
	switch {
	case errors.Is(err, redislock.ErrLockNotHeld):
		s.metrics.count("unlock", resultLost)
		return fmt.Errorf("redis storage: unlock %s: the lock had expired (held longer than lock_ttl without a refresh)", name)
	case err != nil:
		s.metrics.count("unlock", resultError)
		return fmt.Errorf("redis storage: unlock %s: %w", name, err)
	}
	s.metrics.count("unlock", resultOK)
	return nil
}
