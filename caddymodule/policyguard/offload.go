package policyguard

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
	"github.com/legacygate/legacygate/internal/payloadcache"
	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/internal/xmlscan"
)

// Offload is policy_guard's offload block: a client's policy is served by
// the gateway, without asking the manager, when the index the manager last
// sent that client (within max_age) names a profile serial and checksum
// whose document the gateway already holds, fetched for a client whose
// index named the same serial and checksum, verified against the pinned
// certificates and whose bytes have that checksum (MD5, as SEPM's index
// carries). The document is re-signed for the asking client exactly as a
// fetched one would be: its key, the rotation's hold, the settings rewrite.
// The argument for why this is safe is in docs/design/offload.md.
type Offload struct {
	// ClientKey names the client in its index and profile requests: a query
	// placeholder (read strictly, a repeated key is no key) or any Caddy
	// placeholder. Default {query.hostid}. Requests without one are not
	// offloaded.
	ClientKey string `json:"client_key,omitempty"`

	// RequestKey and RequestValue recognise a profile request by its query.
	// Default action=profile.
	RequestKey   string `json:"request_key,omitempty"`
	RequestValue string `json:"request_value,omitempty"`

	// IndexRoot, Element, SerialAttr and ChecksumAttr say where the index
	// names the profile. Default Index Profile SerialNumber Checksum. Element
	// is also the root of the profile document, which must be among
	// policy_guard's roots.
	IndexRoot    string `json:"index_root,omitempty"`
	Element      string `json:"element,omitempty"`
	SerialAttr   string `json:"serial_attr,omitempty"`
	ChecksumAttr string `json:"checksum_attr,omitempty"`

	// MaxClients bounds how many clients' last index is remembered, least
	// recently used first out. Default 200,000.
	MaxClients int `json:"max_clients,omitempty"`

	// MaxAge is how long after its index a client's profile request may be
	// offloaded. Default 10m.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// CacheSize bounds the manager documents held for offload, in bytes.
	// Default 16 MiB.
	CacheSize int64 `json:"cache_size,omitempty"`
}

// Offload defaults.
const (
	defaultOffloadClients   = 200_000
	defaultOffloadMaxAge    = caddy.Duration(10 * time.Minute)
	defaultOffloadCacheSize = 16 << 20
	defaultOffloadClientKey = "{query.hostid}"
	// Longer client keys, serials or checksums are not remembered: each
	// remembered client costs at most about 1 KiB.
	maxOffloadField = 256
)

// reasonOffloaded: a signed payload served from a document the gateway
// held, without asking the manager.
const reasonOffloaded = "offloaded"

func (o *Offload) withDefaults() Offload {
	d := *o
	set := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	set(&d.ClientKey, defaultOffloadClientKey)
	set(&d.RequestKey, "action")
	set(&d.RequestValue, "profile")
	set(&d.IndexRoot, defaultIndexRoot)
	set(&d.Element, "Profile")
	set(&d.SerialAttr, "SerialNumber")
	set(&d.ChecksumAttr, "Checksum")
	if d.MaxClients == 0 {
		d.MaxClients = defaultOffloadClients
	}
	if d.MaxAge == 0 {
		d.MaxAge = defaultOffloadMaxAge
	}
	if d.CacheSize == 0 {
		d.CacheSize = defaultOffloadCacheSize
	}
	return d
}

// validate names the wrong field; signedRoots are policy_guard's roots.
func (o *Offload) validate(signedRoots []string) error {
	d := o.withDefaults()
	switch {
	case d.MaxClients < 0:
		return fmt.Errorf("policy_guard: offload: max_clients: %d is negative", d.MaxClients)
	case d.MaxAge < 0:
		return fmt.Errorf("policy_guard: offload: max_age: %s is negative", time.Duration(d.MaxAge))
	case d.CacheSize < 0:
		return fmt.Errorf("policy_guard: offload: cache_size: %d is negative", d.CacheSize)
	case !containsString(signedRoots, d.Element):
		return fmt.Errorf("policy_guard: offload: index: the profile element %q is not among policy_guard's roots %v", d.Element, signedRoots)
	case containsString(signedRoots, d.IndexRoot):
		return fmt.Errorf("policy_guard: offload: index: root %q is among policy_guard's signed roots %v; the index is unsigned", d.IndexRoot, signedRoots)
	}
	return nil
}

// unmarshalOffload reads `offload`, alone or with a block:
//
//	offload {
//	    client_key  <placeholder>
//	    request     <query_key> <value>
//	    index       <root> <element> <serial_attr> <checksum_attr>
//	    max_clients <n>
//	    max_age     <duration>
//	    cache_size  <size>
//	}
func unmarshalOffload(d *caddyfile.Dispenser) (*Offload, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	o := &Offload{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		field := d.Val()
		var err error
		switch field {
		case "client_key":
			o.ClientKey, err = caddyarg.One(d)
		case "request":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return nil, d.Err("policy_guard: offload: request: want <query_key> <value>")
			}
			o.RequestKey, o.RequestValue = args[0], args[1]
		case "index":
			args := d.RemainingArgs()
			if len(args) != 4 {
				return nil, d.Err("policy_guard: offload: index: want <root> <element> <serial_attr> <checksum_attr>")
			}
			o.IndexRoot, o.Element, o.SerialAttr, o.ChecksumAttr = args[0], args[1], args[2], args[3]
		case "max_clients":
			o.MaxClients, err = caddyarg.Int(d, 1)
		case "max_age":
			err = caddyarg.Duration(d, &o.MaxAge)
		case "cache_size":
			o.CacheSize, err = caddyarg.Size(d)
		default:
			return nil, d.Errf("policy_guard: offload: unknown subdirective %q", field)
		}
		if err != nil {
			return nil, err
		}
	}
	return o, nil
}

// offloader holds, for one policy_guard, what the clients' last indexes
// named and the verified manager documents that match them.
type offloader struct {
	cfg      Offload // with defaults
	queryKey string  // the client key's query name, "" for other placeholders
	now      func() time.Time

	clients *payloadcache.LRU[string, namedProfile]
	docs    *payloadcache.LRU[namedProfile, heldDocument]

	mu       sync.Mutex
	fetching map[namedProfile]chan struct{} // profiles being fetched: at most one entry per request in progress
}

// namedProfile is what an index names: the profile's serial and checksum.
// In the clients table, at is when the index passed.
type namedProfile struct {
	serial, checksum string
	at               time.Time
}

// heldDocument is a verified manager profile and the media type it came with.
type heldDocument struct {
	doc         []byte
	contentType string
}

func newOffloader(cfg *Offload) *offloader {
	d := cfg.withDefaults()
	o := &offloader{cfg: d, now: time.Now, fetching: map[namedProfile]chan struct{}{}}
	o.queryKey, _ = query.Placeholder(d.ClientKey)
	o.clients = payloadcache.New(int64(d.MaxClients), func(string, namedProfile) int64 { return 1 })
	o.docs = payloadcache.New(d.CacheSize, func(_ namedProfile, h heldDocument) int64 {
		return int64(len(h.doc) + len(h.contentType))
	})
	return o
}

// clientKey is r's client, "" when it has none (or an unusable one).
func (o *offloader) clientKey(r *http.Request) string {
	var key string
	if o.queryKey != "" {
		v, _, err := query.Single(r.URL.RawQuery, o.queryKey)
		if err != nil {
			return ""
		}
		key = v
	} else if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		key = repl.ReplaceKnown(o.cfg.ClientKey, "")
	}
	if len(key) > maxOffloadField {
		return ""
	}
	return key
}

// isProfileRequest: a GET or HEAD whose query names the profile exactly once.
func (o *offloader) isProfileRequest(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	v, found, err := query.Single(r.URL.RawQuery, o.cfg.RequestKey)
	return err == nil && found && v == o.cfg.RequestValue
}

// remember notes what the index body, sent to r's client, names.
func (o *offloader) remember(r *http.Request, root, body []byte) {
	if string(root) != o.cfg.IndexRoot {
		return
	}
	key := o.clientKey(r)
	if key == "" {
		return
	}
	serial, err1 := attributeValue(body, o.cfg.Element, o.cfg.SerialAttr)
	checksum, err2 := attributeValue(body, o.cfg.Element, o.cfg.ChecksumAttr)
	if err := errors.Join(err1, err2); err != nil || serial == "" || checksum == "" {
		return
	}
	// The checksum is hex: one spelling of it keys the held documents.
	o.clients.Put(key, namedProfile{serial: serial, checksum: strings.ToLower(checksum), at: o.now()})
}

// named is what r's client's last index named, if recent enough.
func (o *offloader) named(r *http.Request) (namedProfile, bool) {
	key := o.clientKey(r)
	if key == "" {
		return namedProfile{}, false
	}
	n, ok := o.clients.Get(key)
	if !ok || o.now().Sub(n.at) > time.Duration(o.cfg.MaxAge) {
		return namedProfile{}, false
	}
	return namedProfile{serial: n.serial, checksum: n.checksum}, true
}

// lookup returns the document r's client should receive, when the gateway
// holds it.
func (o *offloader) lookup(r *http.Request) (heldDocument, bool) {
	n, ok := o.named(r)
	if !ok {
		return heldDocument{}, false
	}
	return o.docs.Get(n)
}

// keep holds doc, verified for r, when r's client's index named it: its
// MD5 is the checksum that index carried.
func (o *offloader) keep(r *http.Request, doc []byte, contentType string) {
	n, ok := o.named(r)
	if !ok {
		return
	}
	sum := md5.Sum(doc)
	if !equalHex(n.checksum, sum[:]) {
		return
	}
	o.docs.Put(n, heldDocument{doc: bytes.Clone(doc), contentType: contentType})
}

// equalHex compares a lower-case hex string with sum.
func equalHex(s string, sum []byte) bool {
	return s == hex.EncodeToString(sum)
}

// attributeValue returns the value of attribute on the first element
// under the root, "" when there is none or it is longer than maxOffloadField.
func attributeValue(body []byte, element, attribute string) (string, error) {
	end, err := xmlscan.AttributeValueEnd(body, element, attribute)
	if err != nil || end < 0 {
		return "", err
	}
	start := bytes.LastIndexByte(body[:end], body[end])
	if start < 0 || end-start-1 > maxOffloadField {
		return "", nil
	}
	return string(body[start+1 : end]), nil
}

// serveOffloaded answers a profile request from a held document, re-signed
// for r as a fetched one would be. It reports false, having written
// nothing, when there is nothing to offload or signing failed: the manager
// is then asked as usual, and release, when not nil, must be called once
// that answer is done. Clients whose index names a profile another client
// is fetching wait for that fetch (once), so a policy push costs the
// manager one download per profile, not one per client that asked in the
// same instant.
func (g *PolicyGuard) serveOffloaded(w http.ResponseWriter, r *http.Request) (done bool, err error, release func()) {
	n, ok := g.offload.named(r)
	if !ok {
		return false, nil, nil
	}
	held, ok := g.offload.docs.Get(n)
	if !ok {
		wait, lead := g.offload.join(n)
		if lead != nil {
			return false, nil, lead
		}
		select {
		case <-wait:
		case <-r.Context().Done():
			return true, r.Context().Err(), nil
		}
		if held, ok = g.offload.docs.Get(n); !ok {
			return false, nil, nil
		}
	}
	out, err := g.pipeline.resign(r, held.doc)
	if held, ok := errors.AsType[*heldError](err); ok {
		return true, g.hold(w, r, held.retryAfter), nil
	}
	if err != nil {
		g.logger.Warn("held policy not offloaded, asking the manager", zap.String("path", r.URL.Path), zap.Error(err))
		return false, nil, nil
	}
	g.count(resultSigned, reasonOffloaded)
	h := w.Header()
	if held.contentType != "" {
		h["Content-Type"] = []string{held.contentType}
	}
	h["Content-Length"] = []string{strconv.Itoa(len(out.body))}
	h["Etag"] = []string{out.etag}
	return true, writeResponse(w, r, http.StatusOK, out.body, r.Header.Get("If-None-Match")), nil
}

// join returns the fetch of n in progress to wait for, or, when there is
// none, lead: the caller fetches n and calls lead when done.
func (o *offloader) join(n namedProfile) (wait <-chan struct{}, lead func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if ch, ok := o.fetching[n]; ok {
		return ch, nil
	}
	ch := make(chan struct{})
	o.fetching[n] = ch
	return nil, func() {
		o.mu.Lock()
		delete(o.fetching, n)
		o.mu.Unlock()
		close(ch)
	}
}
