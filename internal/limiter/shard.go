package limiter

import (
	"sync"
	"sync/atomic"
)

const (
	chunkBits = 12
	chunkSize = 1 << chunkBits
	// maxSlots bounds MaxKeys so that slab indices fit in uint32.
	maxSlots = 1 << 31
)

// entry is one tracked key: 24 bytes, no pointers.
type entry struct {
	hash       uint64
	tat        int64
	prev, next uint32
}

// shard is a part of the key space with its own lock, index and
// least-recently-seen list. Entries live in fixed-size chunks that are
// allocated as keys arrive and never moved, so *entry stays valid.
// Slot 0 is the list's sentinel: its next is the most recently seen key,
// its prev the least recently seen.
//
// The index is an open-addressing table (linear probing, at most half
// full) rather than a Go map: each position holds a slot number (0 meaning
// empty) and, above it, 32 bits of the key's hash, so a lookup touches only
// the entry it finds.
type shard struct {
	mu     sync.Mutex
	index  []uint64
	count  int
	chunks [][]entry
	used   uint32 // slots handed out so far, sentinel included
	free   uint32 // head of the free list threaded through next; 0 when empty
	bound  *keyBound
	_      [64]byte // keep neighbouring shards' locks off this cache line
}

// keyBound counts the keys tracked by all shards against the limit.
type keyBound struct {
	tracked atomic.Int64
	max     int64
}

// claim counts one more key if the limit allows it.
func (b *keyBound) claim() bool {
	for {
		n := b.tracked.Load()
		if n >= b.max {
			return false
		}
		if b.tracked.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (s *shard) init(bound *keyBound) {
	s.bound = bound
	s.index = make([]uint64, minIndex)
	s.chunks = [][]entry{make([]entry, chunkSize)}
	s.used = 1
}

func (s *shard) slot(i uint32) *entry {
	return &s.chunks[i>>chunkBits][i&(chunkSize-1)]
}

// touch returns key's entry, moved to the front of the list, creating it
// with a full bucket (and evicting this shard's least recently seen key if
// the limiter is at its bound) when the key is new.
func (s *shard) touch(key uint64, now int64) *entry {
	if _, i := s.find(key); i != 0 {
		if s.slot(0).next != i {
			s.unlink(i)
			s.pushFront(i)
		}
		return s.slot(i)
	}
	i := s.take()
	e := s.slot(i)
	e.hash = key
	e.tat = now
	s.pushFront(i)
	s.insert(i)
	return e
}

// take returns a slot for a new key: when all shards together are at the
// limit, this shard's least recently seen key is evicted and its slot
// reused (a shard that holds nothing yet takes a slot anyway, so the limit
// can be passed by at most one key per shard); else a freed slot or a
// fresh one.
func (s *shard) take() uint32 {
	if !s.bound.claim() {
		if s.count > 0 {
			i := s.slot(0).prev
			s.unlink(i)
			s.remove(s.slot(i).hash)
			return i
		}
		s.bound.tracked.Add(1)
	}
	if i := s.free; i != 0 {
		s.free = s.slot(i).next
		return i
	}
	i := s.used
	if int(i>>chunkBits) == len(s.chunks) {
		s.chunks = append(s.chunks, make([]entry, chunkSize))
	}
	s.used++
	return i
}

func (s *shard) unlink(i uint32) {
	e := s.slot(i)
	s.slot(e.prev).next = e.next
	s.slot(e.next).prev = e.prev
}

func (s *shard) pushFront(i uint32) {
	head := s.slot(0)
	e := s.slot(i)
	e.prev = 0
	e.next = head.next
	s.slot(head.next).prev = i
	head.next = i
}

// sweep frees every entry whose bucket is full at now.
func (s *shard) sweep(now int64) int {
	removed := 0
	defer func() { s.bound.tracked.Add(int64(-removed)) }()
	for i := s.slot(0).prev; i != 0; {
		e := s.slot(i)
		prev := e.prev
		if e.tat <= now {
			s.unlink(i)
			s.remove(e.hash)
			e.next = s.free
			s.free = i
			removed++
		}
		i = prev
	}
	return removed
}

// minIndex is the index's initial size; it doubles as keys arrive.
const minIndex = 16

// home is where key's search starts. The low bits pick the shard, so the
// index uses the bits above them.
func (s *shard) home(key uint64) uint64 {
	return (key >> 6) & uint64(len(s.index)-1)
}

// find returns the index position holding key and its slot, or the empty
// position where key would go and slot 0.
func (s *shard) find(key uint64) (uint64, uint32) {
	mask := uint64(len(s.index) - 1)
	tag := key >> 32
	for p := s.home(key); ; p = (p + 1) & mask {
		v := s.index[p]
		i := uint32(v)
		if i == 0 || (v>>32 == tag && s.slot(i).hash == key) {
			return p, i
		}
	}
}

// indexValue is what the index holds for slot i with key.
func indexValue(key uint64, i uint32) uint64 {
	return key&^0xffffffff | uint64(i)
}

// insert adds slot i, whose key is not in the index, growing the index to
// keep it at most half full.
func (s *shard) insert(i uint32) {
	if (s.count+1)*2 > len(s.index) {
		s.grow()
	}
	key := s.slot(i).hash
	p, _ := s.find(key)
	s.index[p] = indexValue(key, i)
	s.count++
}

func (s *shard) grow() {
	old := s.index
	s.index = make([]uint64, len(old)*2)
	for _, v := range old {
		if uint32(v) != 0 {
			p, _ := s.find(s.slot(uint32(v)).hash)
			s.index[p] = v
		}
	}
}

// remove deletes key from the index, shifting later entries of its probe
// run back so that no search stops early at the hole.
func (s *shard) remove(key uint64) {
	p, i := s.find(key)
	if i == 0 {
		return
	}
	s.count--
	mask := uint64(len(s.index) - 1)
	for {
		s.index[p] = 0
		q := p
		for {
			q = (q + 1) & mask
			v := s.index[q]
			if uint32(v) == 0 {
				return
			}
			h := s.home(s.slot(uint32(v)).hash)
			// v may move back to p unless its home lies cyclically in (p, q].
			if (p < q && (h <= p || h > q)) || (p > q && h <= p && h > q) {
				s.index[p] = v
				p = q
				break
			}
		}
	}
}
