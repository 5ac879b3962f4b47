package manager

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/legacygate/legacygate/internal/secars"
)

// Wire formats of the SEPM-style flavor's queries.
const (
	// WireReadable is the emulator's readable ?action=…&hostid=… (default).
	WireReadable = "readable"
	// WireReal is the shape of real clients: POST ?h=<hex>, the query
	// obfuscated with a key derived from the KCS the manager writes into
	// its SyLink (package secars), and definitions at /content/….
	WireReal = "real"
)

// Counter names of the real wire.
const (
	CountOverloaded = "overloaded" // requests refused above Capacity
)

// realActions maps the real wire's numeric codes to the actions the
// readable wire names.
var realActions = map[int]string{
	secars.ActionRegister: ActionRegister,
	secars.ActionIndex:    ActionIndex,
	secars.ActionProfile:  ActionProfile,
	secars.ActionSyLink:   ActionSyLink,
	secars.ActionLog:      ActionLog,
}

// definitions is the revision of the definitions package the real wire's
// index names; the bytes are served by content (content.go), like any
// other revision.
type definitions struct {
	guid, revision string
}

func newDefinitions() *definitions {
	return &definitions{
		guid:     "{" + randomHex(4) + "-" + randomHex(2) + "-" + randomHex(2) + "-" + randomHex(2) + "-" + randomHex(6) + "}",
		revision: time.Now().UTC().Format("20060102") + "002",
	}
}

// path is the URL path of the revision's full package.
func (d *definitions) path() string {
	return ContentPrefix + d.guid + "/" + d.revision + "/full.zip"
}

// withContent adds the definitions revision, size bytes, to an index
// document.
func (d *definitions) withContent(index []byte, size int64) []byte {
	line := fmt.Sprintf(" <Content Guid=%q Revision=%q Size=\"%d\"/>\n</Index>", d.guid, d.revision, size)
	return bytes.Replace(index, []byte("</Index>"), []byte(line), 1)
}

// realQuery reads a real-wire query: exactly h=<hex> under the manager's
// key, POST for everything (real clients POST every secars request).
func (s *sepm) realQuery(r *http.Request) (sepmQuery, string, error) {
	raw := r.URL.RawQuery
	if raw == helloQuery {
		return sepmQuery{action: ActionHello}, "", nil
	}
	h, ok := strings.CutPrefix(raw, "h=")
	if !ok || strings.ContainsAny(h, "&=") {
		return sepmQuery{}, "", fmt.Errorf("%w: want h=<hex>", errBadFormat)
	}
	q, err := s.key.Decode(h)
	if err != nil {
		return sepmQuery{}, "", fmt.Errorf("%w: %w", errBadFormat, err)
	}
	action, ok := realActions[q.Action]
	if !ok {
		return sepmQuery{}, "", fmt.Errorf("%w: unknown action code %d", errBadFormat, q.Action)
	}
	if r.Method != http.MethodPost {
		return sepmQuery{}, "", fmt.Errorf("%w: %s, want POST", errBadFormat, r.Method)
	}
	return sepmQuery{action: action, hostID: q.HostID}, q.Hostname, nil
}

// capacity refuses requests above a rate with 503 and no Retry-After, as
// IIS answers 503.2 when its concurrent request limit is reached (Broadcom
// KB 177969): the error that sends SEP clients into accelerated heartbeats.
type capacity struct {
	mu       sync.Mutex
	interval time.Duration
	next     time.Time
	burst    time.Duration
}

func newCapacity(perSecond int) *capacity {
	if perSecond <= 0 {
		return nil
	}
	iv := time.Second / time.Duration(perSecond)
	return &capacity{interval: iv, burst: time.Second / 10}
}

// allow takes one slot if the manager has one free now.
func (c *capacity) allow(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if floor := now.Add(-c.burst); c.next.Before(floor) {
		c.next = floor
	}
	if c.next.After(now) {
		return false
	}
	c.next = c.next.Add(c.interval)
	return true
}

// withCapacity applies Config.Capacity around the client endpoints.
func (m *Manager) withCapacity(h http.Handler) http.Handler {
	c := newCapacity(m.cfg.Capacity)
	if c == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.allow(time.Now()) {
			m.count(CountOverloaded)
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("<html><body>503.2 Service Unavailable: the concurrent request limit was exceeded.</body></html>"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// KCS is the sepm flavor's Kcs value, the one its SyLink carries and the
// real wire's h= key derives from; "" for other flavors.
func (m *Manager) KCS() string {
	if s, ok := m.flavor.(*sepm); ok {
		return s.kcs
	}
	return ""
}

// ContentPath is the real wire's definitions URL path; "" otherwise.
func (m *Manager) ContentPath() string {
	if s, ok := m.flavor.(*sepm); ok && s.defs != nil {
		return s.defs.path()
	}
	return ""
}

// hostSet is the set of registered hosts that asked for their index at
// least once; its size is bounded by the host table's.
type hostSet struct {
	mu sync.Mutex
	m  map[string]struct{}
}

func (h *hostSet) add(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = make(map[string]struct{})
	}
	h.m[id] = struct{}{}
}

func (h *hostSet) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.m)
}

// IndexedHosts is how many distinct registered hosts (sepm flavor) had an
// index request reach the manager: behind a gateway, clients that were
// never let through are missing here.
func (m *Manager) IndexedHosts() int {
	if s, ok := m.flavor.(*sepm); ok {
		return s.indexed.len()
	}
	return 0
}

// Status is what the admin endpoints report besides the pin: for the sepm
// flavor the profile and SyLink serials and the KCS.
func (m *Manager) Status() map[string]string { return m.flavor.status() }
