// Package payloadcache is the project's bounded cache: a
// least-recently-used map bounded in bytes (or in entries, with a size of
// 1 each), safe for concurrent use. It holds re-signed policy payloads,
// offloaded profiles and small definitions files.
package payloadcache

import (
	"container/list"
	"sync"
)

// LRU maps keys to values, least recently used first out, holding at most
// maxBytes as counted by size. Values are never changed once stored.
type LRU[K comparable, V any] struct {
	maxBytes int64
	size     func(K, V) int64

	mu      sync.Mutex
	lru     *list.List // of *entry[K, V], most recently used first
	entries map[K]*list.Element
	bytes   int64
}

type entry[K comparable, V any] struct {
	key   K
	value V
}

// New returns an LRU of at most maxBytes (0 holds nothing); size counts
// an entry's bytes.
func New[K comparable, V any](maxBytes int64, size func(K, V) int64) *LRU[K, V] {
	return &LRU[K, V]{maxBytes: max(maxBytes, 0), size: size, lru: list.New(), entries: map[K]*list.Element{}}
}

// Get returns key's value and marks it recently used.
func (c *LRU[K, V]) Get(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		var zero V
		return zero, false
	}
	c.lru.MoveToFront(e)
	return e.Value.(*entry[K, V]).value, true
}

// Put stores value under key, replacing what was there, and evicts the
// least recently used entries over the bound. A value larger than the
// whole bound is not stored.
func (c *LRU[K, V]) Put(key K, value V) {
	size := c.size(key, value)
	if size > c.maxBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.entries[key]; ok {
		c.remove(old)
	}
	c.entries[key] = c.lru.PushFront(&entry[K, V]{key: key, value: value})
	c.bytes += size
	for c.bytes > c.maxBytes {
		c.remove(c.lru.Back())
	}
}

func (c *LRU[K, V]) remove(e *list.Element) {
	en := c.lru.Remove(e).(*entry[K, V])
	delete(c.entries, en.key)
	c.bytes -= c.size(en.key, en.value)
}

// Len is the number of entries.
func (c *LRU[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Bytes is the size of the entries.
func (c *LRU[K, V]) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}
