// Package contentcache is the content_cache HTTP handler: it caches the
// manager's immutable downloads (SEPM virus definitions at
// /content/{GUID}/{revision}/full.zip) at the gateway, on disk and for small
// objects in memory, so that when thousands of clients fetch a new revision
// the manager serves it once per gateway.
package contentcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/metrics"
	"github.com/legacygate/legacygate/caddymodule/internal/response"
)

func init() {
	caddy.RegisterModule(ContentCache{})
	httpcaddyfile.RegisterHandlerDirective("content_cache", parseContentCache)
	// Before templates, so after encode and ahead of package_guard and
	// policy_guard (both before invoke): a fetch passes through the guards
	// in its route, and only what they let through is cached.
	httpcaddyfile.RegisterDirectiveOrder("content_cache", httpcaddyfile.Before, "templates")
}

// Defaults.
const (
	defaultMaxDisk         = 4 << 30
	defaultMaxMemory       = 64 << 20
	defaultMaxMemoryObject = 1 << 20
	defaultMaxObject       = 1 << 30
	defaultPrefix          = "/content"
	defaultFetchTimeout    = caddy.Duration(time.Hour)
)

// ContentCache caches the manager's answers to plain GETs of immutable
// objects (module http.handlers.content_cache). A request is cached when it
// is a GET or HEAD without a query, Authorization or Cookie, whose path is
// exactly <prefix>/<GUID>/<revision>/<file>; anything else passes through
// untouched (counted as bypass).
//
// The first GET of an object fetches it from the manager (through the rest
// of the route, reverse_proxy and any guard there) with no range or
// condition and identity encoding, and writes it to disk; that client and
// every client asking meanwhile are streamed the object as it is written
// (singleflight: one fetch per object). Only a 200 with a single
// Content-Length, identity encoding and no Content-Range, Set-Cookie,
// no-store/private or Vary (but Accept-Encoding) is cached; any other
// answer goes to the client that asked, and concurrent clients ask the
// manager themselves. A fetch that ends short of its Content-Length, runs
// over it, or fails, is deleted and never served as complete: the last
// byte reaches tailing clients only once the object is committed, and their
// connections are aborted otherwise.
//
// Cached objects are served with Range (single and multiple ranges) and
// conditional requests (If-None-Match against the manager's ETag, or one
// derived from the SHA-256 of the body; If-Modified-Since against its
// Last-Modified) answered at the gateway.
type ContentCache struct {
	// Dir is where the objects are stored. Default: legacygate/content in
	// Caddy's data directory. Handlers naming the same directory share it
	// (the last one loaded sets the bounds), across reloads and restarts.
	Dir string `json:"dir,omitempty"`

	// MaxDisk bounds the bytes on disk (each object is charged 4 KiB more);
	// least recently used objects are deleted first. Default 4 GiB.
	MaxDisk int64 `json:"max_disk,omitempty"`

	// MaxObject is the largest object cached; larger ones pass through.
	// Default 1 GiB, at most MaxDisk.
	MaxObject int64 `json:"max_object,omitempty"`

	// MaxMemory bounds the copies of small objects held in memory besides
	// their file, least recently used first out. Default 64 MiB.
	MaxMemory int64 `json:"max_memory,omitempty"`

	// MaxMemoryObject is the largest object held in memory. Default 1 MiB.
	MaxMemoryObject int64 `json:"max_memory_object,omitempty"`

	// Prefix is the path under which objects are cached. Default /content.
	Prefix string `json:"prefix,omitempty"`

	// FetchTimeout bounds one fetch from the manager, which continues when
	// the client that started it goes away. Default 1h.
	FetchTimeout caddy.Duration `json:"fetch_timeout,omitempty"`

	dir     string
	store   *store
	logger  *zap.Logger
	results *prometheus.CounterVec
	served  prometheus.Counter
	fetched prometheus.Counter
	stored  *prometheus.GaugeVec
}

// CaddyModule returns the Caddy module information.
func (ContentCache) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.content_cache",
		New: func() caddy.Module { return new(ContentCache) },
	}
}

// Results, the values of the result label.
const (
	resultHit        = "hit"        // served from the cache
	resultMiss       = "miss"       // this request fetched the object
	resultShared     = "shared"     // streamed from another request's fetch
	resultBypass     = "bypass"     // not cacheable: passed to the manager
	resultIncomplete = "incomplete" // a fetch failed; nothing was cached
)

var contentCacheMetrics = struct {
	results         *prometheus.CounterVec
	served, fetched prometheus.Counter
	stored          *prometheus.GaugeVec
}{
	results: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "legacygate_content_cache_total",
		Help: "Requests handled by content_cache by result (hit, miss, shared, bypass), and fetches that failed (incomplete).",
	}, []string{"result"}),
	served: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "legacygate_content_cache_served_bytes_total",
		Help: "Body bytes content_cache served to clients from the cache or a fetch in progress.",
	}),
	fetched: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "legacygate_content_cache_fetched_bytes_total",
		Help: "Body bytes content_cache fetched from the manager into the cache.",
	}),
	stored: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "legacygate_content_cache_stored_bytes",
		Help: "Bytes content_cache holds, by tier (disk, including fetches in progress; memory).",
	}, []string{"tier"}),
}

// stores holds one store per directory, shared by handlers and reloads.
var stores = caddy.NewUsagePool()

// Provision fills the defaults, registers the metrics and opens the store.
func (c *ContentCache) Provision(ctx caddy.Context) error {
	c.logger = ctx.Logger()
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return err
	}
	reg := ctx.GetMetricsRegistry()
	var err error
	if c.results, err = metrics.Register(reg, contentCacheMetrics.results); err != nil {
		return err
	}
	if c.served, err = metrics.Register(reg, contentCacheMetrics.served); err != nil {
		return err
	}
	if c.fetched, err = metrics.Register(reg, contentCacheMetrics.fetched); err != nil {
		return err
	}
	if c.stored, err = metrics.Register(reg, contentCacheMetrics.stored); err != nil {
		return err
	}
	if c.dir, err = filepath.Abs(c.Dir); err != nil {
		return fmt.Errorf("content_cache: dir: %w", err)
	}
	lim := limits{maxDisk: c.MaxDisk, maxObject: c.MaxObject, maxMemory: c.MaxMemory, maxMemoryObject: c.MaxMemoryObject}
	v, loaded, err := stores.LoadOrNew(c.dir, func() (caddy.Destructor, error) {
		return openStore(c.dir, lim, c.logger)
	})
	if err != nil {
		return fmt.Errorf("content_cache: %w", err)
	}
	c.store = v.(*store)
	if loaded {
		c.store.setLimits(lim)
	}
	c.gauge()
	return nil
}

func (c *ContentCache) setDefaults() {
	if c.Dir == "" {
		c.Dir = filepath.Join(caddy.AppDataDir(), "legacygate", "content")
	}
	if c.MaxDisk == 0 {
		c.MaxDisk = defaultMaxDisk
	}
	if c.MaxObject == 0 {
		c.MaxObject = min(defaultMaxObject, c.MaxDisk)
	}
	if c.MaxMemory == 0 {
		c.MaxMemory = defaultMaxMemory
	}
	if c.MaxMemoryObject == 0 {
		c.MaxMemoryObject = min(defaultMaxMemoryObject, c.MaxMemory)
	}
	if c.Prefix == "" {
		c.Prefix = defaultPrefix
	}
	if c.FetchTimeout == 0 {
		c.FetchTimeout = defaultFetchTimeout
	}
}

// Validate names the first field out of range.
func (c *ContentCache) Validate() error {
	switch {
	case c.MaxDisk < 0:
		return fmt.Errorf("content_cache: max_disk: %d is negative", c.MaxDisk)
	case c.MaxObject < 0 || c.MaxObject > c.MaxDisk && c.MaxDisk > 0:
		return fmt.Errorf("content_cache: max_object: %d is not between 0 and max_disk (%d)", c.MaxObject, c.MaxDisk)
	case c.MaxMemory < 0:
		return fmt.Errorf("content_cache: max_memory: %d is negative", c.MaxMemory)
	case c.MaxMemoryObject < 0 || c.MaxMemoryObject > c.MaxMemory && c.MaxMemory > 0:
		return fmt.Errorf("content_cache: max_memory_object: %d is not between 0 and max_memory (%d)", c.MaxMemoryObject, c.MaxMemory)
	case c.FetchTimeout < 0:
		return fmt.Errorf("content_cache: fetch_timeout: %s is negative", time.Duration(c.FetchTimeout))
	}
	if c.Prefix != "" && (!strings.HasPrefix(c.Prefix, "/") || strings.HasSuffix(c.Prefix, "/") || !isPrefixPath(c.Prefix)) {
		return fmt.Errorf("content_cache: prefix: %q is not a path such as /content (no trailing slash)", c.Prefix)
	}
	return nil
}

// isPrefixPath accepts /-separated tokens.
func isPrefixPath(p string) bool {
	for _, seg := range strings.Split(p[1:], "/") {
		if !isToken(seg, maxNameLen) {
			return false
		}
	}
	return true
}

// Cleanup releases the store; it stays open while another configuration uses it.
func (c *ContentCache) Cleanup() error {
	if c.store == nil {
		return nil
	}
	_, err := stores.Delete(c.dir)
	return err
}

// ServeHTTP serves r from the cache, from a fetch in progress, or by
// fetching it; requests the cache does not take pass through to next.
func (c *ContentCache) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	key, why := c.cacheable(r)
	if why != nil {
		c.count(resultBypass)
		c.logger.Debug("content request passed uncached", zap.String("path", truncate(r.URL.Path)), zap.Error(why))
		return next.ServeHTTP(w, r)
	}
	// A fetch that fails under a client is retried once by that client;
	// a second failure is its answer.
	for range 3 {
		o, mem, f, leader := c.store.lookup(key, r.Method == http.MethodGet)
		switch {
		case mem != nil:
			c.count(resultHit)
			c.serveContent(w, r, mem.meta, newBytesReader(mem.body))
			return nil
		case o != nil:
			if c.serveObject(w, r, o) {
				return nil
			}
		case leader:
			return c.fetch(w, r, next, f)
		case f == nil: // a HEAD with nothing cached: no fetch for headers only
			c.count(resultBypass)
			return next.ServeHTTP(w, r)
		default:
			if done, err := c.follow(w, r, next, f); done {
				return err
			}
		}
	}
	return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("content %s: fetches from the manager kept failing", truncate(key)))
}

// cacheable returns r's cache key, or why r is not taken by the cache.
func (c *ContentCache) cacheable(r *http.Request) (string, error) {
	switch {
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		return "", fmt.Errorf("method %s", r.Method)
	case r.URL.RawQuery != "" || r.URL.ForceQuery:
		return "", errors.New("the request has a query")
	case len(r.Header.Values("Authorization")) > 0 || len(r.Header.Values("Cookie")) > 0:
		return "", errors.New("the request carries credentials (Authorization or Cookie)")
	}
	return cacheKey(c.Prefix, r.URL.Path)
}

// plainGET is a GET the fetch's own stream answers: no range, no condition.
func plainGET(r *http.Request) bool {
	if r.Method != http.MethodGet {
		return false
	}
	for _, k := range conditionalHeaders {
		if _, ok := r.Header[k]; ok {
			return false
		}
	}
	return true
}

// conditionalHeaders are the request headers that make an answer other
// than the whole object; the fetch drops them, the cache answers them.
var conditionalHeaders = []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since"}

// serveObject serves a complete object from disk; false, having written
// nothing, when its file is missing or of the wrong size (it is dropped).
func (c *ContentCache) serveObject(w http.ResponseWriter, r *http.Request, o *object) bool {
	file, err := c.store.open(o)
	if err != nil {
		c.logger.Warn("cached content dropped", zap.String("path", truncate(o.meta.Key)), zap.Error(err))
		c.store.drop(o)
		c.gauge()
		return false
	}
	defer file.Close()
	c.count(resultHit)
	c.serveContent(w, r, o.meta, file)
	return true
}

// serveContent answers from a complete body: Range and conditional
// requests are http.ServeContent's.
func (c *ContentCache) serveContent(w http.ResponseWriter, r *http.Request, m meta, body readSeeker) {
	h := w.Header()
	setObjectHeaders(h, m)
	if m.ContentType == "" {
		h["Content-Type"] = nil // not sniffed: the manager named none
	}
	modtime, _ := http.ParseTime(m.LastModified)
	if zeroSuffixRange(r.Header.Get("Range")) {
		// http.ServeContent answers "bytes=-0" with a 206 of an empty,
		// inverted range ("bytes 4096-4095/4096"); it is unsatisfiable
		// (RFC 9110 14.1.1).
		h.Set("Content-Range", "bytes */"+strconv.FormatInt(m.Size, 10))
		h["Content-Type"] = nil
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return
	}
	http.ServeContent(&countingWriter{ResponseWriter: w, n: c.served}, r, "", modtime, body)
}

// zeroSuffixRange reports whether a bytes Range names a suffix of length 0.
func zeroSuffixRange(v string) bool {
	specs, ok := strings.CutPrefix(v, "bytes=")
	if !ok {
		return false
	}
	for spec := range strings.SplitSeq(specs, ",") {
		spec = strings.TrimSpace(spec)
		if len(spec) > 1 && spec[0] == '-' && strings.Trim(spec[1:], "0") == "" {
			return true
		}
	}
	return false
}

// follow serves r from another request's fetch f. done is false when r
// must look again: the object was committed, or the fetch failed before r
// received anything.
func (c *ContentCache) follow(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, f *flight) (done bool, err error) {
	state, err := f.waitPast(r.Context(), stateFetching)
	if err != nil {
		return true, err
	}
	switch state {
	case stateBypass:
		c.count(resultBypass)
		return true, next.ServeHTTP(w, r)
	case stateStreaming:
		if plainGET(r) || r.Method == http.MethodHead {
			c.count(resultShared)
			if !f.tail(r.Context(), w, r.Method == http.MethodHead, c.addServed) {
				panic(http.ErrAbortHandler)
			}
			return true, nil
		}
		// A range or condition is answered from the complete object.
		if _, err := f.waitPast(r.Context(), stateStreaming); err != nil {
			return true, err
		}
	}
	return false, nil
}

// fetch asks the manager for the object f stands for, on behalf of every
// client that asks meanwhile, and answers r.
func (c *ContentCache) fetch(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, f *flight) error {
	c.count(resultMiss)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), time.Duration(c.FetchTimeout))
	defer cancel()
	up := upstreamRequest(r, ctx)
	fw := &fetchWriter{c: c, f: f, client: w, header: http.Header{}}
	if plainGET(r) {
		fw.clientCtx, fw.tailDone = r.Context(), make(chan bool, 1)
	}
	defer fw.settle()
	aborted, err := response.ServeNext(fw, up, next)
	switch fw.mode {
	case modeNone:
		c.store.forget(f)
		f.finish(stateFailed)
		if aborted {
			panic(http.ErrAbortHandler)
		}
		if err == nil {
			err = caddyhttp.Error(http.StatusBadGateway, errors.New("the manager gave no answer"))
		}
		return err
	case modePass:
		if aborted {
			panic(http.ErrAbortHandler)
		}
		return err
	}
	ok := fw.complete(aborted, err)
	c.gauge()
	if fw.tailDone != nil {
		if !<-fw.tailDone {
			panic(http.ErrAbortHandler)
		}
		return nil
	}
	if !ok {
		return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("content %s: the fetch from the manager failed", truncate(f.key)))
	}
	o, mem, _, _ := c.store.lookup(f.key, false)
	switch {
	case mem != nil:
		c.serveContent(w, r, mem.meta, newBytesReader(mem.body))
		return nil
	case o != nil && c.serveObject(w, r, o):
		return nil
	}
	return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("content %s: evicted before it could be served", truncate(f.key)))
}

// upstreamRequest is r as the manager is asked for it: the whole object,
// identity-encoded, on a context that outlives r's client.
func upstreamRequest(r *http.Request, ctx context.Context) *http.Request {
	up := r.Clone(ctx)
	up.Method = http.MethodGet
	for _, k := range conditionalHeaders {
		delete(up.Header, k)
	}
	up.Header.Set("Accept-Encoding", "identity")
	return up
}

func (c *ContentCache) count(result string) { c.results.WithLabelValues(result).Inc() }

func (c *ContentCache) addServed(n int64) { c.served.Add(float64(n)) }

// readSeeker is a complete body: a file or a byte slice.
type readSeeker = io.ReadSeeker

func newBytesReader(b []byte) readSeeker { return bytes.NewReader(b) }

func (c *ContentCache) gauge() {
	disk, mem := c.store.usage()
	c.stored.WithLabelValues("disk").Set(float64(disk))
	c.stored.WithLabelValues("memory").Set(float64(mem))
}

// fetchWriter is the response writer of a fetch: a cacheable answer goes to
// disk (and the clients tail it), any other straight to the client that
// started the fetch.
type fetchWriter struct {
	c      *ContentCache
	f      *flight
	client http.ResponseWriter
	header http.Header

	mode    int
	file    *os.File
	meta    meta
	written int64
	sum     hash.Hash
	mem     []byte // the body, when small enough to be held in memory
	err     error  // why the body on disk is not the manager's answer

	clientCtx context.Context // of the client that started the fetch
	tailDone  chan bool       // its tail's result; nil when it waits for the whole object
}

const (
	modeNone  = iota // no status yet
	modeCache        // a cacheable 200, written to disk
	modePass         // anything else, passed to the client
)

func (fw *fetchWriter) Header() http.Header {
	if fw.mode == modePass {
		return fw.client.Header()
	}
	return fw.header
}

// WriteHeader decides whether the answer is cached.
func (fw *fetchWriter) WriteHeader(status int) {
	if fw.mode != modeNone || status < http.StatusOK {
		return // informational answers are not forwarded
	}
	size, why := cacheableAnswer(status, fw.header)
	if why == nil && !fw.c.store.reserve(size) {
		why = fmt.Errorf("%d bytes do not fit: over max_object, or max_disk is held by fetches in progress", size)
	}
	if why == nil {
		if why = fw.startCaching(size); why == nil {
			return
		}
		fw.c.store.unreserve(size)
	}
	fw.c.logger.Debug("content answer passed uncached",
		zap.String("path", truncate(fw.f.key)), zap.Int("status", status), zap.Error(why))
	fw.mode = modePass
	fw.c.count(resultBypass)
	fw.c.store.forget(fw.f)
	fw.f.finish(stateBypass)
	response.CopyHeader(fw.client.Header(), fw.header)
	fw.client.WriteHeader(status)
}

func (fw *fetchWriter) startCaching(size int64) error {
	file, err := fw.c.store.create(fw.f.key)
	if err != nil {
		fw.c.logger.Warn("content cache file not created", zap.String("path", truncate(fw.f.key)), zap.Error(err))
		return fmt.Errorf("creating the cache file: %w", err)
	}
	h := fw.header
	fw.file, fw.mode, fw.sum = file, modeCache, sha256.New()
	fw.meta = meta{
		Key: fw.f.key, Size: size,
		ContentType: h.Get("Content-Type"), ETag: h.Get("Etag"),
		LastModified: h.Get("Last-Modified"), ContentDisposition: h.Get("Content-Disposition"),
	}
	if size <= fw.c.store.memoryObjectLimit() {
		fw.mem = make([]byte, 0, size)
	}
	fw.f.start(fw.meta)
	if fw.tailDone != nil {
		go func() { fw.tailDone <- fw.f.tail(fw.clientCtx, fw.client, false, fw.c.addServed) }()
	}
	return nil
}

func (fw *fetchWriter) Write(p []byte) (int, error) {
	switch fw.mode {
	case modeNone:
		fw.WriteHeader(http.StatusOK)
		return fw.Write(p)
	case modePass:
		return fw.client.Write(p)
	}
	if fw.err != nil {
		return 0, fw.err
	}
	if fw.written+int64(len(p)) > fw.meta.Size {
		fw.err = fmt.Errorf("the manager sent more than its Content-Length %d", fw.meta.Size)
		return 0, fw.err
	}
	n, err := fw.file.Write(p)
	fw.sum.Write(p[:n])
	if fw.mem != nil {
		fw.mem = append(fw.mem, p[:n]...)
	}
	fw.written += int64(n)
	fw.c.fetched.Add(float64(n))
	fw.f.progress(fw.written)
	if err != nil {
		fw.err = fmt.Errorf("writing the cache file: %w", err)
		return n, fw.err
	}
	return n, nil
}

// Flush flushes a passed answer; a cached one is flushed by each tail.
func (fw *fetchWriter) Flush() {
	if fw.mode == modePass {
		http.NewResponseController(fw.client).Flush()
	}
}

// settle fails a fetch that a panic in the rest of the route left
// unfinished, so that no client waits on it for ever and its file and
// reservation go, and waits for the tail still writing to the client.
func (fw *fetchWriter) settle() {
	state, _, _ := fw.f.snapshot()
	if state != stateFetching && state != stateStreaming {
		return
	}
	if fw.mode == modeCache {
		fw.complete(true, nil)
		if fw.tailDone != nil {
			<-fw.tailDone
		}
		return
	}
	fw.c.store.forget(fw.f)
	fw.f.finish(stateFailed)
}

// complete commits the object when the whole declared body arrived, or
// deletes it; it reports which.
func (fw *fetchWriter) complete(aborted bool, err error) bool {
	closeErr := fw.file.Close()
	switch {
	case aborted:
		err = errors.New("the manager's answer was cut short")
	case err != nil:
	case fw.err != nil:
		err = fw.err
	case fw.written != fw.meta.Size:
		err = fmt.Errorf("the manager sent %d of its Content-Length %d bytes", fw.written, fw.meta.Size)
	case closeErr != nil:
		err = fmt.Errorf("closing the cache file: %w", closeErr)
	}
	if err == nil {
		sum := hex.EncodeToString(fw.sum.Sum(nil))
		fw.meta.SHA256, fw.meta.Stored = sum, time.Now().UTC()
		if fw.meta.ETag == "" {
			fw.meta.ETag = `"sha256-` + sum[:32] + `"`
		}
		if err = fw.c.store.commit(fw.f, fw.meta, fw.mem); err == nil {
			fw.f.finish(stateDone)
			return true
		}
		err = fmt.Errorf("writing the cache metadata: %w", err)
	}
	fw.c.count(resultIncomplete)
	fw.c.logger.Warn("content fetch failed, nothing cached",
		zap.String("path", truncate(fw.f.key)), zap.Int64("bytes", fw.written),
		zap.Int64("content_length", fw.meta.Size), zap.Error(err))
	os.Remove(fw.f.path)
	fw.c.store.unreserve(fw.meta.Size)
	fw.c.store.forget(fw.f)
	fw.f.finish(stateFailed)
	return false
}

// cacheableAnswer returns the declared size of an answer the cache may
// keep, or why it may not.
func cacheableAnswer(status int, h http.Header) (int64, error) {
	if status != http.StatusOK {
		return 0, fmt.Errorf("status %d", status)
	}
	if err := response.RepeatedSingleton(h); err != nil {
		return 0, err
	}
	if err := response.IdentityEncoded(h); err != nil {
		return 0, err
	}
	cl := h.Get("Content-Length")
	size, err := strconv.ParseInt(cl, 10, 64)
	if err != nil || size < 0 || cl == "" || cl[0] == '+' || len(h.Values("Transfer-Encoding")) > 0 {
		return 0, fmt.Errorf("Content-Length %q: no declared length", cl)
	}
	for _, k := range []string{"Content-Range", "Set-Cookie"} {
		if len(response.HeaderValues(h, k)) > 0 {
			return 0, fmt.Errorf("the answer carries %s", k)
		}
	}
	for _, v := range response.HeaderValues(h, "Cache-Control") {
		lv := strings.ToLower(v)
		if strings.Contains(lv, "no-store") || strings.Contains(lv, "private") {
			return 0, fmt.Errorf("Cache-Control %q", v)
		}
	}
	for _, v := range response.HeaderValues(h, "Vary") {
		for field := range strings.SplitSeq(v, ",") {
			if f := strings.TrimSpace(field); f != "" && !strings.EqualFold(f, "Accept-Encoding") {
				return 0, fmt.Errorf("Vary %q", v)
			}
		}
	}
	return size, nil
}

// countingWriter counts the body bytes served from the cache.
type countingWriter struct {
	http.ResponseWriter
	n prometheus.Counter
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(float64(n))
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Interface guards.
var (
	_ caddy.Provisioner           = (*ContentCache)(nil)
	_ caddy.CleanerUpper          = (*ContentCache)(nil)
	_ caddy.Validator             = (*ContentCache)(nil)
	_ caddyhttp.MiddlewareHandler = (*ContentCache)(nil)
)
