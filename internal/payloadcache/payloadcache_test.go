package payloadcache

import "testing"

func size(k string, v []byte) int64 { return int64(len(k) + len(v)) }

func TestLRUEvictsLeastRecentlyUsedWithinBytes(t *testing.T) {
	c := New[string, []byte](20, size)
	c.Put("a", []byte("123456789")) // 10 bytes
	c.Put("b", []byte("123456789"))
	if _, ok := c.Get("a"); !ok {
		t.Fatal("a missing")
	}
	c.Put("c", []byte("123456789")) // evicts b, the least recently used
	if _, ok := c.Get("b"); ok {
		t.Fatal("b was not evicted")
	}
	if _, ok := c.Get("a"); !ok {
		t.Fatal("a was evicted although used more recently")
	}
	if c.Len() != 2 || c.Bytes() != 20 {
		t.Fatalf("len %d bytes %d", c.Len(), c.Bytes())
	}
}

func TestLRUReplacesAndRefusesWhatCannotFit(t *testing.T) {
	c := New[string, []byte](20, size)
	c.Put("a", []byte("1"))
	c.Put("a", []byte("22"))
	if v, _ := c.Get("a"); string(v) != "22" || c.Bytes() != 3 {
		t.Fatalf("got %q, %d bytes", v, c.Bytes())
	}
	c.Put("big", make([]byte, 20))
	if _, ok := c.Get("big"); ok || c.Bytes() != 3 {
		t.Fatal("an entry over the bound was stored")
	}
}
