package rotation

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/internal/rotationtable"
)

// storageTimeout bounds one round of storage operations.
const storageTimeout = 30 * time.Second

// rotationFileExt ends every progress file's key.
const rotationFileExt = ".lgrt"

// rotationStore keeps rotation progress in Caddy storage, one file per
// gateway instance under legacygate/rotation/<window>/<instance>.lgrt, so
// instances never write the same key. Each instance merges every file
// (its own included) before writing its own, under a lock on its own file:
// the merge is a join, so progress only grows, and an old configuration
// saving on Cleanup while the new one syncs (a reload) loses nothing. The
// folder is per window, so one rotation's files never meet the next's.
type rotationStore struct {
	storage  certmagic.Storage
	dir      string
	self     string
	purgeAge time.Duration
	logger   *zap.Logger

	// merged remembers, per file, the length and checksum trailer of the
	// content last merged or written: an unchanged file is not decoded and
	// merged again (the merge is idempotent, so skipping it changes
	// nothing). One entry per instance file, never per client.
	mu     sync.Mutex
	merged map[string]fileSum
}

// fileSum identifies a snapshot's content: its length and CRC-32C trailer.
type fileSum struct {
	size int
	crc  [4]byte
}

func sumOf(data []byte) fileSum {
	var s fileSum
	s.size = len(data)
	if len(data) >= 4 {
		copy(s.crc[:], data[len(data)-4:])
	}
	return s
}

func (s *rotationStore) unchanged(key string, data []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.merged[key]
	return ok && old == sumOf(data)
}

func (s *rotationStore) remember(key string, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.merged[key] = sumOf(data)
}

func (s *rotationStore) forget(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.merged, key)
}

func newRotationStore(storage certmagic.Storage, w rotationtable.Window, instance string, purgeAge time.Duration, logger *zap.Logger) *rotationStore {
	window := strconv.FormatInt(w.Start.Unix(), 10) + "-" + strconv.FormatInt(w.End.Unix(), 10)
	return &rotationStore{
		storage:  storage,
		dir:      path.Join("legacygate", "rotation", window),
		self:     instance,
		purgeAge: purgeAge,
		logger:   logger,
		merged:   map[string]fileSum{},
	}
}

func (s *rotationStore) key(instance string) string {
	return path.Join(s.dir, instance+rotationFileExt)
}

// loadStats say what a load found.
type loadStats struct {
	files   int // snapshots merged
	skipped int // files that could not be read or decoded
	purged  int // dead instances' files deleted
}

// load merges every instance's snapshot into table and purges files not
// written for purgeAge. A file that cannot be decoded is logged and skipped
// (one instance's bad write must not stop the others); failing to list the
// folder or to read this instance's own file is an error, since saving
// after that could lose progress.
func (s *rotationStore) load(ctx context.Context, table *rotationtable.RotationTable, now time.Time) (loadStats, error) {
	var st loadStats
	keys, err := s.storage.List(ctx, s.dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("listing %s: %w", s.dir, err)
	}
	for _, key := range keys {
		if !strings.HasSuffix(key, rotationFileExt) {
			continue
		}
		own := key == s.key(s.self)
		if !own && s.purge(ctx, key) {
			st.purged++
			continue
		}
		err := s.merge(ctx, table, key, now)
		switch {
		case err == nil:
			st.files++
		case own && !errors.Is(err, rotationtable.ErrRotationSnapshot):
			return st, err
		default:
			st.skipped++
			s.logger.Error("rotation progress file skipped", zap.String("key", key), zap.Error(err))
		}
	}
	return st, nil
}

func (s *rotationStore) merge(ctx context.Context, table *rotationtable.RotationTable, key string, now time.Time) error {
	data, err := s.storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // purged by another instance since the listing
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", key, err)
	}
	if s.unchanged(key, data) {
		return nil
	}
	snap, err := rotationtable.DecodeRotationSnapshot(data)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	st, err := table.Merge(snap, now)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	s.remember(key, data)
	if st.Refused > 0 {
		s.logger.Warn("rotation table full: clients from storage not tracked",
			zap.String("key", key), zap.Int("refused", st.Refused))
	}
	return nil
}

// purge deletes key if it was last written more than purgeAge ago, by the
// wall clock (storage times are wall-clock times).
func (s *rotationStore) purge(ctx context.Context, key string) bool {
	info, err := s.storage.Stat(ctx, key)
	if err != nil || info.Modified.IsZero() || time.Since(info.Modified) <= s.purgeAge {
		return false
	}
	if err := s.storage.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.logger.Warn("purging a dead instance's rotation progress", zap.String("key", key), zap.Error(err))
		return false
	}
	s.forget(key)
	s.logger.Info("purged a dead instance's rotation progress", zap.String("key", key), zap.Time("modified", info.Modified))
	return true
}

// save writes table as this instance's file.
func (s *rotationStore) save(ctx context.Context, table *rotationtable.RotationTable) error {
	data, err := table.Snapshot().MarshalBinary()
	if err != nil {
		return fmt.Errorf("encoding rotation progress: %w", err)
	}
	if err := s.storage.Store(ctx, s.key(s.self), data); err != nil {
		return fmt.Errorf("writing %s: %w", s.key(s.self), err)
	}
	s.remember(s.key(s.self), data)
	return nil
}

// sync merges every instance's progress into table, then saves it, holding
// the lock on this instance's file. A failed load saves nothing.
func (s *rotationStore) sync(ctx context.Context, table *rotationtable.RotationTable, now time.Time) error {
	lock := s.key(s.self)
	if err := s.storage.Lock(ctx, lock); err != nil {
		return fmt.Errorf("locking %s: %w", lock, err)
	}
	defer func() { _ = s.storage.Unlock(context.WithoutCancel(ctx), lock) }()
	if _, err := s.load(ctx, table, now); err != nil {
		return err
	}
	return s.save(ctx, table)
}
