package contentcache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
)

const testKey = "/content/{C60DC234-65F9-4674-94AE-62158EFCA433}/120120a011/full.zip"

// origin stands in for reverse_proxy and the manager: it answers every
// request with body, counts them, and can hold them, cut them short or
// change their headers.
type origin struct {
	body    []byte
	header  http.Header // extra headers; nil: Content-Type application/zip
	status  int
	cutAt   int           // >0: abort after this many bytes, as reverse_proxy does when the manager hangs up
	gate    chan struct{} // non-nil: the body waits until it is closed
	noCL    bool
	extra   int // bytes sent beyond Content-Length
	calls   atomic.Int64
	lastReq atomic.Pointer[http.Request]
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	o.calls.Add(1)
	o.lastReq.Store(r)
	h := w.Header()
	h.Set("Content-Type", "application/zip")
	h.Set("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT")
	for k, v := range o.header {
		h[k] = v
	}
	if !o.noCL {
		h.Set("Content-Length", strconv.Itoa(len(o.body)))
	}
	status := o.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	half := len(o.body) / 2
	if _, err := w.Write(o.body[:half]); err != nil {
		return err
	}
	if o.gate != nil {
		<-o.gate
	}
	if o.cutAt > 0 {
		panic(http.ErrAbortHandler)
	}
	if _, err := w.Write(o.body[half:]); err != nil {
		return err
	}
	if o.extra > 0 {
		if _, err := w.Write(make([]byte, o.extra)); err != nil {
			return err
		}
	}
	return nil
}

func randomBody(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func newCache(t testing.TB, c *ContentCache) *ContentCache {
	t.Helper()
	if c.Dir == "" {
		c.Dir = t.TempDir()
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := c.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Cleanup() })
	return c
}

// serve puts c in front of next in a real HTTP server, answering errors
// as Caddy does (their status, nothing else).
func serve(t testing.TB, c *ContentCache, next caddyhttp.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := c.ServeHTTP(w, r, next); err != nil {
			status := http.StatusInternalServerError
			var he caddyhttp.HandlerError
			if errors.As(err, &he) {
				status = he.StatusCode
			}
			w.WriteHeader(status)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func get(t testing.TB, url string, header map[string]string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// testClient leaves bodies as they come: no transparent gzip decoding.
var testClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64}}

func TestConcurrentGetsOfOneObjectFetchItOnceAndAllGetItWhole(t *testing.T) {
	o := &origin{body: randomBody(t, 1<<20), gate: make(chan struct{})}
	srv := serve(t, newCache(t, &ContentCache{}), o)
	const clients = 20
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Go(func() {
			resp, body, err := get(t, srv.URL+testKey, nil)
			switch {
			case err != nil:
				errs <- err
			case resp.StatusCode != http.StatusOK || !bytes.Equal(body, o.body):
				errs <- fmt.Errorf("status %d, %d bytes, want 200 and the %d-byte object", resp.StatusCode, len(body), len(o.body))
			}
		})
	}
	// Let every client join the one fetch before the body completes.
	time.Sleep(300 * time.Millisecond)
	close(o.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("manager asked %d times for one object, want 1", n)
	}
	if _, body, err := get(t, srv.URL+testKey, nil); err != nil || !bytes.Equal(body, o.body) {
		t.Fatalf("hit: %v, %d bytes", err, len(body))
	}
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("manager asked %d times after a hit, want 1", n)
	}
}

func TestAFetchCutShortIsNeverServedCompleteNorCached(t *testing.T) {
	tests := []struct {
		name string
		o    *origin
	}{
		{"manager hangs up mid-body", &origin{cutAt: 1}},
		{"manager sends more than its Content-Length", &origin{extra: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.body = randomBody(t, 1<<20)
			tt.o.gate = make(chan struct{})
			c := newCache(t, &ContentCache{})
			srv := serve(t, c, tt.o)
			var wg sync.WaitGroup
			var complete atomic.Int64
			for range 10 {
				wg.Go(func() {
					resp, body, err := get(t, srv.URL+testKey, nil)
					if err == nil && resp.StatusCode == http.StatusOK && len(body) == len(tt.o.body) {
						complete.Add(1)
					}
				})
			}
			time.Sleep(200 * time.Millisecond)
			close(tt.o.gate)
			wg.Wait()
			if n := complete.Load(); n != 0 {
				t.Fatalf("%d clients received a complete-looking 200 of a failed fetch", n)
			}
			if _, ok := c.store.objects[testKey]; ok {
				t.Fatal("the failed fetch was cached")
			}
			files, _ := filepath.Glob(filepath.Join(c.dir, "*"))
			if len(files) != 0 {
				t.Fatalf("files left behind: %v", files)
			}
			before := tt.o.calls.Load()
			get(t, srv.URL+testKey, nil)
			if tt.o.calls.Load() == before {
				t.Fatal("the next request did not ask the manager again")
			}
		})
	}
}

func TestAnswersAndRequestsTheCacheMustNotKeepReachTheManagerEachTime(t *testing.T) {
	tests := []struct {
		name   string
		o      *origin
		path   string
		header map[string]string
	}{
		{name: "404", o: &origin{status: http.StatusNotFound}},
		{name: "no Content-Length", o: &origin{noCL: true}},
		{name: "gzip", o: &origin{header: http.Header{"Content-Encoding": {"gzip"}}}},
		{name: "Set-Cookie", o: &origin{header: http.Header{"Set-Cookie": {"a=b"}}}},
		{name: "no-store", o: &origin{header: http.Header{"Cache-Control": {"no-store"}}}},
		{name: "Vary Cookie", o: &origin{header: http.Header{"Vary": {"Accept-Encoding, Cookie"}}}},
		{name: "a query", o: &origin{}, path: testKey + "?x=1"},
		{name: "four segments", o: &origin{}, path: "/content/{C60DC234-65F9-4674-94AE-62158EFCA433}/1/2/full.zip"},
		{name: "not a GUID", o: &origin{}, path: "/content/notaguid/1/full.zip"},
		{name: "outside the prefix", o: &origin{}, path: "/other/{C60DC234-65F9-4674-94AE-62158EFCA433}/1/full.zip"},
		{name: "Authorization", o: &origin{}, header: map[string]string{"Authorization": "Basic eDp5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.o
			o.body = randomBody(t, 1000)
			c := newCache(t, &ContentCache{})
			srv := serve(t, c, o)
			path := tt.path
			if path == "" {
				path = testKey
			}
			for range 2 {
				resp, body, err := get(t, srv.URL+path, tt.header)
				if err != nil {
					t.Fatal(err)
				}
				if want := max(o.status, 200); resp.StatusCode != want || !bytes.Equal(body, o.body) {
					t.Fatalf("status %d, %d bytes; want the manager's %d and body passed through", resp.StatusCode, len(body), want)
				}
			}
			if n := o.calls.Load(); n != 2 {
				t.Fatalf("manager asked %d times for 2 requests, want 2 (nothing cached)", n)
			}
			if len(c.store.objects) != 0 {
				t.Fatal("something was cached")
			}
		})
	}
}

func TestRangesAndConditionsAreAnsweredFromTheCache(t *testing.T) {
	o := &origin{body: randomBody(t, 100<<10), header: http.Header{"Etag": {`"v1"`}}}
	srv := serve(t, newCache(t, &ContentCache{}), o)
	// The first request is a range: the fetch takes the whole object and
	// the range is answered from it.
	resp, body, err := get(t, srv.URL+testKey, map[string]string{"Range": "bytes=10-19"})
	if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, o.body[10:20]) {
		t.Fatalf("first range: %v, status %d, %q", err, resp.StatusCode, body)
	}
	if r := o.lastReq.Load(); r.Header.Get("Range") != "" || r.Header.Get("Accept-Encoding") != "identity" {
		t.Fatalf("manager asked with Range %q, Accept-Encoding %q; want none and identity", r.Header.Get("Range"), r.Header.Get("Accept-Encoding"))
	}
	tests := []struct {
		name   string
		header map[string]string
		status int
		body   []byte
	}{
		{"a range", map[string]string{"Range": "bytes=100-199"}, http.StatusPartialContent, o.body[100:200]},
		{"a suffix range", map[string]string{"Range": "bytes=-5"}, http.StatusPartialContent, o.body[len(o.body)-5:]},
		{"an unsatisfiable range", map[string]string{"Range": "bytes=999999-"}, http.StatusRequestedRangeNotSatisfiable, nil},
		{"If-None-Match the ETag", map[string]string{"If-None-Match": `"v1"`}, http.StatusNotModified, nil},
		{"If-None-Match another", map[string]string{"If-None-Match": `"v0"`}, http.StatusOK, o.body},
		{"If-Modified-Since later", map[string]string{"If-Modified-Since": "Wed, 02 Dec 2026 10:00:00 GMT"}, http.StatusNotModified, nil},
		{"If-Range stale", map[string]string{"Range": "bytes=0-9", "If-Range": `"v0"`}, http.StatusOK, o.body},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body, err := get(t, srv.URL+testKey, tt.header)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || (tt.body != nil && !bytes.Equal(body, tt.body)) {
				t.Fatalf("status %d, %d bytes; want %d, %d bytes", resp.StatusCode, len(body), tt.status, len(tt.body))
			}
		})
	}
	resp, body, err = get(t, srv.URL+testKey, map[string]string{"Range": "bytes=0-1,5-6"})
	if err != nil || resp.StatusCode != http.StatusPartialContent || !strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges") {
		t.Fatalf("multi-range: %v, status %d, type %q", err, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	_ = body
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("manager asked %d times, want 1", n)
	}
}

func TestWithoutAManagerETagOneIsDerivedFromTheBody(t *testing.T) {
	o := &origin{body: randomBody(t, 2000)}
	srv := serve(t, newCache(t, &ContentCache{}), o)
	get(t, srv.URL+testKey, nil)
	resp, _, _ := get(t, srv.URL+testKey, nil)
	etag := resp.Header.Get("Etag")
	if !strings.HasPrefix(etag, `"sha256-`) {
		t.Fatalf("ETag %q, want one derived from the SHA-256", etag)
	}
	resp, _, _ = get(t, srv.URL+testKey, map[string]string{"If-None-Match": etag})
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("status %d, want 304", resp.StatusCode)
	}
}

func TestDiskBoundEvictsTheLeastRecentlyUsed(t *testing.T) {
	o := &origin{body: randomBody(t, 100<<10)}
	c := newCache(t, &ContentCache{MaxDisk: 250 << 10, MaxMemory: 1, MaxMemoryObject: 1})
	srv := serve(t, c, o)
	key := func(i int) string { return strings.Replace(testKey, "120120a011", "rev"+strconv.Itoa(i), 1) }
	get(t, srv.URL+key(0), nil)
	get(t, srv.URL+key(1), nil)
	get(t, srv.URL+key(0), nil) // 0 is now more recent than 1
	get(t, srv.URL+key(2), nil) // evicts 1
	if n := o.calls.Load(); n != 3 {
		t.Fatalf("%d fetches, want 3", n)
	}
	get(t, srv.URL+key(0), nil)
	if n := o.calls.Load(); n != 3 {
		t.Fatal("the recently used object was evicted")
	}
	get(t, srv.URL+key(1), nil)
	if n := o.calls.Load(); n != 4 {
		t.Fatal("the least recently used object was not evicted")
	}
	disk, _ := c.store.usage()
	if disk > c.MaxDisk {
		t.Fatalf("%d bytes charged on disk, over max_disk %d", disk, c.MaxDisk)
	}
	files, _ := filepath.Glob(filepath.Join(c.dir, "*"+dataSuffix))
	if len(files) != 2 {
		t.Fatalf("%d bodies on disk, want 2", len(files))
	}
}

func TestAnObjectOverMaxObjectPassesThrough(t *testing.T) {
	o := &origin{body: randomBody(t, 10<<10)}
	c := newCache(t, &ContentCache{MaxObject: 5 << 10})
	srv := serve(t, c, o)
	for range 2 {
		if _, body, err := get(t, srv.URL+testKey, nil); err != nil || !bytes.Equal(body, o.body) {
			t.Fatalf("%v, %d bytes", err, len(body))
		}
	}
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

func TestARestartKeepsCompleteObjectsAndDeletesUnfinishedOnes(t *testing.T) {
	dir := t.TempDir()
	o := &origin{body: randomBody(t, 5000)}
	c := newCache(t, &ContentCache{Dir: dir})
	srv := serve(t, c, o)
	get(t, srv.URL+testKey, nil)
	srv.Close()
	c.Cleanup()
	c.store = nil // a second Cleanup by t.Cleanup is a no-op
	leftover := filepath.Join(dir, fileName("/content/x")+dataSuffix)
	if err := os.WriteFile(leftover, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}

	c2 := newCache(t, &ContentCache{Dir: dir})
	srv2 := serve(t, c2, o)
	if _, body, err := get(t, srv2.URL+testKey, nil); err != nil || !bytes.Equal(body, o.body) {
		t.Fatalf("%v, %d bytes", err, len(body))
	}
	if n := o.calls.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1: the object on disk was not reused", n)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unfinished body not deleted: %v", err)
	}
}

func TestABodyOnDiskOfTheWrongSizeIsRefetched(t *testing.T) {
	o := &origin{body: randomBody(t, 5000)}
	c := newCache(t, &ContentCache{MaxMemory: 1, MaxMemoryObject: 1})
	srv := serve(t, c, o)
	get(t, srv.URL+testKey, nil)
	if err := os.Truncate(filepath.Join(c.dir, fileName(testKey)+dataSuffix), 100); err != nil {
		t.Fatal(err)
	}
	if _, body, err := get(t, srv.URL+testKey, nil); err != nil || !bytes.Equal(body, o.body) {
		t.Fatalf("%v, %d bytes", err, len(body))
	}
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

func TestHEADNeverFetchesAndIsAnsweredFromTheCache(t *testing.T) {
	o := &origin{body: randomBody(t, 5000)}
	srv := serve(t, newCache(t, &ContentCache{}), o)
	resp, err := http.Head(srv.URL + testKey)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	get(t, srv.URL+testKey, nil)
	resp, err = http.Head(srv.URL + testKey)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ContentLength != int64(len(o.body)) {
		t.Fatalf("HEAD Content-Length %d, want %d", resp.ContentLength, len(o.body))
	}
	if n := o.calls.Load(); n != 2 {
		t.Fatalf("%d manager requests, want 2 (the uncached HEAD and the GET)", n)
	}
}

func TestValidateNamesTheWrongField(t *testing.T) {
	tests := []struct {
		c    ContentCache
		want string
	}{
		{ContentCache{MaxDisk: -1}, "max_disk"},
		{ContentCache{MaxDisk: 10, MaxObject: 11}, "max_object"},
		{ContentCache{MaxMemory: -1}, "max_memory"},
		{ContentCache{MaxMemory: 10, MaxMemoryObject: 11}, "max_memory_object"},
		{ContentCache{Prefix: "content"}, "prefix"},
		{ContentCache{Prefix: "/content/"}, "prefix"},
		{ContentCache{FetchTimeout: -1}, "fetch_timeout"},
	}
	for _, tt := range tests {
		err := tt.c.Validate()
		if err == nil || !strings.Contains(err.Error(), "content_cache: "+tt.want+":") {
			t.Errorf("%+v: %v, want an error naming %s", tt.c, err, tt.want)
		}
	}
}

// noopCounter stands in for the served-bytes counter where none is registered.
type noopCounter struct{ prometheus.Counter }

func (noopCounter) Add(float64) {}

func TestAPanicInTheRouteFailsTheFetchForEveryWaitingClient(t *testing.T) {
	o := &origin{body: randomBody(t, 100<<10)}
	release := make(chan struct{})
	c := newCache(t, &ContentCache{})
	var panicked atomic.Bool
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if panicked.CompareAndSwap(false, true) {
			w.Header().Set("Content-Length", strconv.Itoa(len(o.body)))
			w.WriteHeader(http.StatusOK)
			w.Write(o.body[:10])
			<-release
			panic("a bug in a handler")
		}
		return o.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil && v != "a bug in a handler" {
				panic(v)
			} else if v != nil {
				panic(http.ErrAbortHandler)
			}
		}()
		if err := c.ServeHTTP(w, r, next); err != nil {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	t.Cleanup(srv.Close)
	done := make(chan error, 2)
	for range 2 {
		go func() {
			_, body, err := get(t, srv.URL+testKey, nil)
			if err == nil && len(body) == len(o.body) {
				err = errors.New("a complete body from a fetch that panicked")
			}
			done <- err
		}()
	}
	time.Sleep(100 * time.Millisecond)
	close(release)
	for range 2 {
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("a client got a complete-looking answer")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a client still waits on a fetch that panicked")
		}
	}
	if _, body, err := get(t, srv.URL+testKey, nil); err != nil || !bytes.Equal(body, o.body) {
		t.Fatalf("after the panic: %v, %d bytes", err, len(body))
	}
}
