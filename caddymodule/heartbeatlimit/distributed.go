package heartbeatlimit

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/internal/limiter"
)

// HeartbeatDistributed makes heartbeat_limit instances that share a storage
// limit clients together, eventually consistently: every interval each
// instance writes the buckets it has drawn on (key hash and when the bucket
// is full again) to its own file in the storage, and reads the others'
// files. A client's debt elsewhere is added to its local bucket when it is
// checked, so the hot path stays local; until the others learn of it (one
// interval or two), a client can spend up to a burst at each instance.
// Files not rewritten for purge_age (instances that died or were reloaded
// under a new identity) are deleted by whichever instance sees them.
//
// Instances must share the zone, and with it the secret that key hashes are
// made with (kept in the storage, created by the first instance); clocks
// should be synchronised (NTP), as the files hold wall-clock times.
type HeartbeatDistributed struct {
	// Zone names the shared state; each distributed heartbeat_limit using
	// the same storage needs its own. It is heartbeat_limit's zone, which
	// may be given here or there (if both, they must agree). Default
	// "default".
	Zone string `json:"zone,omitempty"`

	// Interval between writes of this instance's state and reads of the
	// others'. Default 5s.
	Interval caddy.Duration `json:"interval,omitempty"`

	// PurgeAge is how old another instance's state may get before it is
	// deleted. Default 10 intervals; it must exceed the interval.
	PurgeAge caddy.Duration `json:"purge_age,omitempty"`

	// StorageRaw is the storage to share, if not the one Caddy is
	// configured with (the global storage option).
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`

	storage  certmagic.Storage
	dir      string
	instance string
	limiter  *limiter.Limiter
	maxKeys  int
	epoch    int64 // wall-clock Unix ns at the limiter clock's zero
	remote   atomic.Pointer[map[uint64]int64]
	logger   *zap.Logger
}

const (
	stateMagic    = "lghb0001"
	stateEntry    = 16
	syncTimeout   = 30 * time.Second
	defaultSyncIn = 5 * time.Second
)

// provision checks the settings, opens the storage and returns the shared
// hash seed.
func (d *HeartbeatDistributed) provision(ctx caddy.Context, h *HeartbeatLimit) ([limiter.SeedSize]byte, error) {
	var seed [limiter.SeedSize]byte
	if h.interval == 0 {
		return seed, errors.New("needs a per-client rate")
	}
	d.Zone = h.Zone
	if d.Zone == "" {
		d.Zone = "default"
	}
	if d.Interval == 0 {
		d.Interval = caddy.Duration(defaultSyncIn)
	}
	if d.Interval < 0 {
		return seed, fmt.Errorf("interval %v: must be positive", time.Duration(d.Interval))
	}
	if d.PurgeAge == 0 {
		d.PurgeAge = 10 * d.Interval
	}
	if d.PurgeAge <= d.Interval {
		return seed, fmt.Errorf("purge_age %v: must exceed interval %v", time.Duration(d.PurgeAge), time.Duration(d.Interval))
	}
	if d.StorageRaw == nil {
		d.storage = ctx.Storage()
	} else {
		mod, err := ctx.LoadModule(d, "StorageRaw")
		if err != nil {
			return seed, fmt.Errorf("storage: %w", err)
		}
		if d.storage, err = mod.(caddy.StorageConverter).CertMagicStorage(); err != nil {
			return seed, fmt.Errorf("storage: %w", err)
		}
	}
	d.logger = h.logger
	d.maxKeys = h.MaxClients
	d.dir = path.Join("legacygate", "heartbeat_limit", d.Zone)
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	return d.loadSeed(sctx)
}

// loadSeed returns the zone's hash seed, creating it under the storage's
// lock if no instance has yet.
func (d *HeartbeatDistributed) loadSeed(ctx context.Context) ([limiter.SeedSize]byte, error) {
	var seed [limiter.SeedSize]byte
	key := path.Join(d.dir, "seed")
	if b, err := d.storage.Load(ctx, key); err == nil {
		return seedFrom(key, b)
	}
	if err := d.storage.Lock(ctx, key); err != nil {
		return seed, fmt.Errorf("locking %s: %w", key, err)
	}
	defer func() { _ = d.storage.Unlock(context.WithoutCancel(ctx), key) }()
	b, err := d.storage.Load(ctx, key)
	if err == nil {
		return seedFrom(key, b)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return seed, fmt.Errorf("loading %s: %w", key, err)
	}
	seed = limiter.RandomSeed()
	if err := d.storage.Store(ctx, key, seed[:]); err != nil {
		return seed, fmt.Errorf("storing %s: %w", key, err)
	}
	return seed, nil
}

func seedFrom(key string, b []byte) ([limiter.SeedSize]byte, error) {
	var seed [limiter.SeedSize]byte
	if len(b) != limiter.SeedSize {
		return seed, fmt.Errorf("%s: %d bytes, want %d", key, len(b), limiter.SeedSize)
	}
	copy(seed[:], b)
	return seed, nil
}

// attach points the exchange at the limiter it shares, and at the instance
// name that limiter's state is written under: the same across reloads, so
// a reloaded configuration does not count its own previous state file as
// another instance's debt.
func (d *HeartbeatDistributed) attach(l *limiter.Limiter, instance string) {
	d.limiter = l
	d.instance = instance
	d.epoch = time.Now().UnixNano() - l.Now()
}

// start runs the exchange until h stops.
func (d *HeartbeatDistributed) start(h *HeartbeatLimit) {
	h.maintenance.Add(1)
	go func() {
		defer h.maintenance.Done()
		ticker := time.NewTicker(time.Duration(d.Interval))
		defer ticker.Stop()
		for {
			d.sync()
			select {
			case <-h.stop:
				d.write()
				return
			case <-ticker.C:
			}
		}
	}()
}

// shared returns key's debt at the other instances, as of the last sync.
func (d *HeartbeatDistributed) shared(key uint64) time.Duration {
	m := d.remote.Load()
	if m == nil {
		return 0
	}
	end, ok := (*m)[key]
	if !ok {
		return 0
	}
	return time.Duration(max(0, end-d.limiter.Now()))
}

func (d *HeartbeatDistributed) sync() {
	d.write()
	d.read()
}

// write stores this instance's non-full buckets.
func (d *HeartbeatDistributed) write() {
	state := encodeState(time.Now().UnixNano(), func(add func(uint64, int64)) {
		d.limiter.Each(func(key uint64, tat int64) { add(key, d.epoch+tat) })
	})
	ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
	defer cancel()
	key := path.Join(d.dir, "instances", d.instance)
	if err := d.storage.Store(ctx, key, state); err != nil {
		d.logger.Warn("heartbeat_limit: writing distributed state", zap.String("key", key), zap.Error(err))
	}
}

// read merges the other instances' debts and purges stale state.
func (d *HeartbeatDistributed) read() {
	ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
	defer cancel()
	dir := path.Join(d.dir, "instances")
	keys, err := d.storage.List(ctx, dir, false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		d.logger.Warn("heartbeat_limit: listing distributed state", zap.String("dir", dir), zap.Error(err))
		return
	}
	now := time.Now().UnixNano()
	debts := make(map[uint64]int64)
	for _, key := range keys {
		if path.Base(key) == d.instance {
			continue
		}
		d.merge(ctx, key, now, debts)
	}
	localNow := d.limiter.Now()
	for k, debt := range debts {
		debts[k] = localNow + debt
	}
	d.remote.Store(&debts)
}

// merge adds one instance's debts to debts, or deletes its state when it
// is older than purge_age.
func (d *HeartbeatDistributed) merge(ctx context.Context, key string, now int64, debts map[uint64]int64) {
	b, err := d.storage.Load(ctx, key)
	if err != nil {
		d.logger.Debug("heartbeat_limit: loading distributed state", zap.String("key", key), zap.Error(err))
		return
	}
	written, err := decodeState(b, nil)
	if err != nil {
		d.logger.Warn("heartbeat_limit: ignoring distributed state", zap.String("key", key), zap.Error(err))
		return
	}
	if now-written > int64(d.PurgeAge) {
		d.logger.Info("heartbeat_limit: purging state of an instance gone quiet",
			zap.String("key", key), zap.Time("written", time.Unix(0, written)))
		if err := d.storage.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.logger.Warn("heartbeat_limit: purging distributed state", zap.String("key", key), zap.Error(err))
		}
		return
	}
	_, _ = decodeState(b, func(hash uint64, full int64) {
		debt := full - now
		if debt <= 0 {
			return
		}
		if _, ok := debts[hash]; !ok && len(debts) >= d.maxKeys {
			return
		}
		debts[hash] += debt
	})
}

// encodeState lays out a state file: the magic, the time it was
// written, then (key hash, time the bucket is full again) pairs, all
// little-endian.
func encodeState(written int64, each func(add func(uint64, int64))) []byte {
	b := make([]byte, 0, 4096)
	b = append(b, stateMagic...)
	b = binary.LittleEndian.AppendUint64(b, uint64(written))
	each(func(hash uint64, full int64) {
		b = binary.LittleEndian.AppendUint64(b, hash)
		b = binary.LittleEndian.AppendUint64(b, uint64(full))
	})
	return b
}

// decodeState checks a state file and hands its entries to fn
// (only when the whole file is well formed, and unless fn is nil),
// returning when it was written.
func decodeState(b []byte, fn func(hash uint64, full int64)) (int64, error) {
	header := len(stateMagic) + 8
	if len(b) < header || string(b[:len(stateMagic)]) != stateMagic {
		return 0, errors.New("not a heartbeat_limit state file")
	}
	if (len(b)-header)%stateEntry != 0 {
		return 0, fmt.Errorf("truncated: %d bytes of entries", len(b)-header)
	}
	written := int64(binary.LittleEndian.Uint64(b[len(stateMagic):]))
	if fn == nil {
		return written, nil
	}
	for rest := b[header:]; len(rest) > 0; rest = rest[stateEntry:] {
		fn(binary.LittleEndian.Uint64(rest), int64(binary.LittleEndian.Uint64(rest[8:])))
	}
	return written, nil
}
