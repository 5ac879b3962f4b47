package contentcache

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/legacygate/legacygate/internal/payloadcache"
)

// File names in the cache directory: <sha256 of the key>.data holds the
// body, <…>.meta the headers, written once the body is complete. A .data
// without its .meta is a fetch that never finished and is deleted at start.
const (
	dataSuffix    = ".data"
	metaSuffix    = ".meta"
	metaTmpSuffix = ".meta.tmp"
	maxMetaBytes  = 64 << 10
)

// entryOverhead is what every object is charged on disk besides its body,
// so that even empty objects bound how many entries the index can hold.
const entryOverhead = 4 << 10

// meta is what is stored of an answer besides its body.
type meta struct {
	Key                string    `json:"key"`
	Size               int64     `json:"size"`
	SHA256             string    `json:"sha256"`
	ContentType        string    `json:"content_type,omitempty"`
	ETag               string    `json:"etag,omitempty"`
	LastModified       string    `json:"last_modified,omitempty"`
	ContentDisposition string    `json:"content_disposition,omitempty"`
	Stored             time.Time `json:"stored"`
}

// object is a complete answer on disk.
type object struct {
	meta meta
	name string // file base name, without suffix
	elem *list.Element
}

// memObject is a small complete answer held in memory too.
type memObject struct {
	meta meta
	body []byte
}

// limits are the bounds of a store; a reload may change them.
type limits struct {
	maxDisk, maxObject, maxMemory, maxMemoryObject int64
}

// store is one cache directory, shared by every content_cache handler that
// names it (through a caddy.UsagePool), across reloads.
type store struct {
	dir    string
	logger *zap.Logger

	mu       sync.Mutex
	lim      limits
	objects  map[string]*object // complete, by key
	lru      *list.List         // of *object, most recently used first
	reserved int64              // disk bytes charged: complete objects and fetches in progress
	flights  map[string]*flight // fetches in progress, by key
	mem      *payloadcache.LRU[string, memObject]
}

// openStore creates dir if needed and indexes the complete objects a
// previous run left there, deleting unfinished ones.
func openStore(dir string, lim limits, logger *zap.Logger) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dir: %w", err)
	}
	s := &store{dir: dir, logger: logger, objects: map[string]*object{}, lru: list.New(), flights: map[string]*flight{}}
	if err := s.scan(); err != nil {
		return nil, fmt.Errorf("dir: %w", err)
	}
	s.setLimits(lim)
	return s, nil
}

// scan indexes dir, oldest stored last in the LRU order.
func (s *store) scan() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	var found []*object
	metas := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, metaTmpSuffix):
			os.Remove(filepath.Join(s.dir, name))
		case strings.HasSuffix(name, metaSuffix):
			base := strings.TrimSuffix(name, metaSuffix)
			if o := s.load(base); o != nil {
				found = append(found, o)
				metas[base] = true
			} else {
				os.Remove(filepath.Join(s.dir, name))
			}
		}
	}
	for _, e := range entries {
		name := e.Name()
		if base, ok := strings.CutSuffix(name, dataSuffix); ok && !metas[base] {
			os.Remove(filepath.Join(s.dir, name))
		}
	}
	sort.Slice(found, func(i, j int) bool { return found[i].meta.Stored.After(found[j].meta.Stored) })
	for _, o := range found {
		o.elem = s.lru.PushBack(o)
		s.objects[o.meta.Key] = o
		s.reserved += charge(o.meta.Size)
	}
	return nil
}

// load reads one object's meta and checks it against its name and body;
// nil when anything does not match.
func (s *store) load(base string) *object {
	f, err := os.Open(filepath.Join(s.dir, base+metaSuffix))
	if err != nil {
		return nil
	}
	defer f.Close()
	var m meta
	if err := json.NewDecoder(io.LimitReader(f, maxMetaBytes)).Decode(&m); err != nil || fileName(m.Key) != base || m.Size < 0 {
		return nil
	}
	st, err := os.Stat(filepath.Join(s.dir, base+dataSuffix))
	if err != nil || st.Size() != m.Size {
		return nil
	}
	return &object{meta: m, name: base}
}

// fileName is the hex SHA-256 of a key: keys never reach the file system.
func fileName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func charge(size int64) int64 { return size + entryOverhead }

func (s *store) setLimits(lim limits) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mem == nil || s.lim.maxMemory != lim.maxMemory {
		s.mem = payloadcache.New(lim.maxMemory, func(_ string, o memObject) int64 { return int64(len(o.body)) + entryOverhead })
	}
	s.lim = lim
	s.evictLocked(0)
}

// evictLocked removes least recently used complete objects until need more
// bytes fit under max_disk; false when they cannot.
func (s *store) evictLocked(need int64) bool {
	for s.reserved+need > s.lim.maxDisk {
		back := s.lru.Back()
		if back == nil {
			return false
		}
		s.removeLocked(back.Value.(*object))
	}
	return true
}

// removeLocked drops o from the index and deletes its files. A reader that
// has the body open keeps reading it (the file is unlinked, not truncated).
func (s *store) removeLocked(o *object) {
	s.lru.Remove(o.elem)
	delete(s.objects, o.meta.Key)
	s.reserved -= charge(o.meta.Size)
	for _, suffix := range []string{metaSuffix, dataSuffix} {
		if err := os.Remove(filepath.Join(s.dir, o.name+suffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.logger.Warn("content cache file not deleted", zap.String("file", o.name+suffix), zap.Error(err))
		}
	}
}

// lookup returns the complete object of key (from memory when held there),
// or the fetch in progress, or, when lead is true and there is neither, a
// new fetch the caller leads.
func (s *store) lookup(key string, lead bool) (o *object, mem *memObject, f *flight, leader bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o := s.objects[key]; o != nil {
		s.lru.MoveToFront(o.elem)
		if m, ok := s.mem.Get(key); ok {
			return nil, &m, nil, false
		}
		return o, nil, nil, false
	}
	if f := s.flights[key]; f != nil {
		return nil, nil, f, false
	}
	if !lead {
		return nil, nil, nil, false
	}
	f = newFlight(key, s.dir)
	s.flights[key] = f
	return nil, nil, f, true
}

// drop forgets o when its file turned out missing or of the wrong size.
func (s *store) drop(o *object) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objects[o.meta.Key] == o {
		s.removeLocked(o)
	}
}

// reserve charges size bytes to a fetch about to write them, evicting what
// it must; false when the object is over max_object or cannot fit.
func (s *store) reserve(size int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if size > s.lim.maxObject || !s.evictLocked(charge(size)) {
		return false
	}
	s.reserved += charge(size)
	return true
}

// unreserve gives back what reserve charged to a fetch that failed.
func (s *store) unreserve(size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reserved -= charge(size)
}

// forget takes f off the fetches in progress: it failed, was not cacheable,
// or was committed.
func (s *store) forget(f *flight) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.flights[f.key] == f {
		delete(s.flights, f.key)
	}
}

// commit writes the meta of a complete body and indexes it; body is kept
// in memory too when small enough (nil: not held).
func (s *store) commit(f *flight, m meta, body []byte) error {
	name := fileName(f.key)
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.dir, name+metaTmpSuffix)
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, name+metaSuffix)); err != nil {
		os.Remove(tmp)
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o := &object{meta: m, name: name}
	o.elem = s.lru.PushFront(o)
	s.objects[f.key] = o
	if s.flights[f.key] == f {
		delete(s.flights, f.key)
	}
	if body != nil && int64(len(body)) <= s.lim.maxMemoryObject {
		s.mem.Put(f.key, memObject{meta: m, body: body})
	}
	return nil
}

// memoryObjectLimit is the largest body held in memory.
func (s *store) memoryObjectLimit() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lim.maxMemoryObject
}

// usage is the disk bytes charged and the memory bytes held.
func (s *store) usage() (disk, memory int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reserved, s.mem.Bytes()
}

// Destruct is called by the usage pool when no configuration uses the
// directory any more; files stay for the next start.
func (s *store) Destruct() error { return nil }

// create opens the body file of a new fetch, replacing any leftover.
func (s *store) create(key string) (*os.File, error) {
	path := filepath.Join(s.dir, fileName(key)+dataSuffix)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
}

// open opens the body of o and checks its size against the meta.
func (s *store) open(o *object) (*os.File, error) {
	f, err := os.Open(filepath.Join(s.dir, o.name+dataSuffix))
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && st.Size() != o.meta.Size {
		err = fmt.Errorf("cached body is %d bytes, its meta says %d", st.Size(), o.meta.Size)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
