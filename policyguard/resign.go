package policyguard

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/beevik/etree"

	"github.com/legacygate/legacygate/internal/payloadcache"
)

// Transform rewrites a verified document before it is re-signed. ID names
// the transform and its configuration; it is part of the cache key.
type Transform interface {
	ID() string
	Apply(root *etree.Element) error
}

// CacheStats describe a Resigner's cache.
type CacheStats struct {
	Hits, Misses, Coalesced uint64
	Bytes                   int64
	Entries                 int
}

// Resigner verifies, transforms and re-signs documents, caching the signed
// output in an LRU bounded in bytes. Concurrent misses for the same key are
// served by one computation. It is safe for concurrent use.
type Resigner struct {
	verifier *Verifier
	cache    *payloadcache.LRU[string, []byte]

	mu       sync.Mutex
	inflight map[string]*flight
	stats    CacheStats
}

// flight is one computation that concurrent callers wait for.
type flight struct {
	done chan struct{}
	out  []byte
	err  error
}

// NewResigner returns a Resigner whose cache holds at most cacheBytes of
// output (keys included); 0 disables caching but still coalesces.
func NewResigner(v *Verifier, cacheBytes int64) *Resigner {
	return &Resigner{
		verifier: v,
		cache:    payloadcache.New(cacheBytes, entrySize),
		inflight: map[string]*flight{},
	}
}

// Resign verifies doc, applies t (may be nil) to what was signed, and signs
// the result with s. Failures of verification are *VerifyError. The
// returned bytes are shared with the cache and must not be modified.
func (r *Resigner) Resign(doc []byte, s *Signer, t Transform) ([]byte, error) {
	key := cacheKey(doc, s, t)
	r.mu.Lock()
	if out, ok := r.cache.Get(key); ok {
		r.stats.Hits++
		r.mu.Unlock()
		return out, nil
	}
	if f, ok := r.inflight[key]; ok {
		r.stats.Coalesced++
		r.mu.Unlock()
		<-f.done
		return f.out, f.err
	}
	f := &flight{done: make(chan struct{})}
	r.inflight[key] = f
	r.stats.Misses++
	r.mu.Unlock()

	f.out, f.err = r.compute(doc, s, t)

	r.mu.Lock()
	delete(r.inflight, key)
	if f.err == nil {
		r.cache.Put(key, f.out)
	}
	r.mu.Unlock()
	close(f.done)
	return f.out, f.err
}

func cacheKey(doc []byte, s *Signer, t Transform) string {
	sum := sha256.Sum256(doc)
	key := hex.EncodeToString(sum[:]) + "|" + s.KeyID() + "|"
	if t != nil {
		key += t.ID()
	}
	return key
}

// compute is the pipeline: verify → transform → sign. Without a transform
// the one-pass fast path runs first; whatever it declines goes through
// goxmldsig.
func (r *Resigner) compute(doc []byte, s *Signer, t Transform) ([]byte, error) {
	if t == nil {
		out, err := r.verifier.fastResign(doc, s)
		if !isDecline(err) {
			return out, err
		}
	}
	return r.slowResign(doc, s, t)
}

// slowResign verifies with goxmldsig and signs the element it returns.
func (r *Resigner) slowResign(doc []byte, s *Signer, t Transform) ([]byte, error) {
	verified, err := r.verifier.Verify(doc)
	if err != nil {
		return nil, err
	}
	root := verified.Root
	if t != nil {
		if err := t.Apply(root); err != nil {
			return nil, fmt.Errorf("transform %s: %w", t.ID(), err)
		}
	}
	// The verified tree holds no signature and is ours: sign it in place.
	if err := dropSignatures(root); err != nil {
		return nil, err
	}
	return s.signOwned(root)
}

// entrySize is what one cached output costs, its key included.
func entrySize(key string, out []byte) int64 { return int64(len(key) + len(out)) }

// Stats returns a snapshot of the cache counters.
func (r *Resigner) Stats() CacheStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stats
	st.Bytes, st.Entries = r.cache.Bytes(), r.cache.Len()
	return st
}
