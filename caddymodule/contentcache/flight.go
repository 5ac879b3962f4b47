package contentcache

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// flightState is where one fetch is.
type flightState int

const (
	stateFetching  flightState = iota // no answer yet
	stateStreaming                    // a cacheable 200 is being written to disk
	stateDone                         // complete and committed: serve from the store
	stateFailed                       // cut short, over its length, or no answer: nothing cached
	stateBypass                       // the answer is not cacheable: each client asks the manager itself
)

// flight is one fetch of one key from the manager, which every client
// asking for the key meanwhile waits for or tails: the manager serves each
// object once (singleflight).
type flight struct {
	key  string
	path string

	mu      sync.Mutex
	state   flightState
	meta    meta  // valid from stateStreaming
	written int64 // body bytes on disk
	changed chan struct{}
}

func newFlight(key, dir string) *flight {
	return &flight{key: key, path: filepath.Join(dir, fileName(key)+dataSuffix), changed: make(chan struct{})}
}

// snapshot returns the state, the bytes written and a channel closed at
// the next change.
func (f *flight) snapshot() (flightState, int64, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, f.written, f.changed
}

// update changes the flight under its lock and wakes every waiter.
func (f *flight) update(change func()) {
	f.mu.Lock()
	change()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *flight) start(m meta) { f.update(func() { f.state, f.meta = stateStreaming, m }) }
func (f *flight) progress(n int64) {
	f.update(func() { f.written = n })
}
func (f *flight) finish(s flightState) { f.update(func() { f.state = s }) }

// waitPast blocks until the flight leaves state s or ctx ends.
func (f *flight) waitPast(ctx context.Context, s flightState) (flightState, error) {
	for {
		state, _, changed := f.snapshot()
		if state != s {
			return state, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return state, ctx.Err()
		}
	}
}

// tailBuffer is the copy buffer of one tailing client.
const tailBuffer = 64 << 10

// tail answers w with the object being fetched, following the file as it
// grows. The last byte is written only once the fetch is committed, so a
// client never holds a complete-looking body of a fetch that then failed.
// It reports false when the answer was cut short (the fetch failed, the
// client went away): the caller must abort the connection, never finish
// it, so the client sees a body shorter than its Content-Length.
func (f *flight) tail(ctx context.Context, w http.ResponseWriter, head bool, served func(int64)) bool {
	f.mu.Lock()
	m := f.meta
	f.mu.Unlock()
	setObjectHeaders(w.Header(), m)
	w.Header().Set("Content-Length", strconv.FormatInt(m.Size, 10))
	w.WriteHeader(http.StatusOK)
	if head {
		return true
	}
	file, err := os.Open(f.path)
	if err != nil {
		return false
	}
	defer file.Close()
	buf := make([]byte, tailBuffer)
	rc := http.NewResponseController(w)
	var pos int64
	for {
		state, written, changed := f.snapshot()
		switch {
		case state == stateFailed:
			return false
		case state == stateDone && pos == m.Size:
			return true
		}
		limit := written
		if state != stateDone {
			limit = min(written, m.Size-1)
		}
		if limit > pos {
			n, err := io.CopyBuffer(w, io.NewSectionReader(file, pos, limit-pos), buf)
			pos += n
			served(n)
			if err != nil {
				return false
			}
			rc.Flush()
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
}

// setObjectHeaders writes the stored headers of an object.
func setObjectHeaders(h http.Header, m meta) {
	for name, v := range map[string]string{
		"Content-Type":        m.ContentType,
		"Etag":                m.ETag,
		"Last-Modified":       m.LastModified,
		"Content-Disposition": m.ContentDisposition,
	} {
		if v != "" {
			h[name] = []string{v}
		}
	}
	h.Set("Accept-Ranges", "bytes")
}
