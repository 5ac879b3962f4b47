// Package manager emulates legacy endpoint-security managers on loopback for
// tests, demos and benchmarks: the client protocol of docs/protocol.md over HTTPS
// (down to TLS 1.0, with the weak certificates real managers present) and
// plain HTTP, documents signed with XML-DSig by the manager's key, and the two
// ways a manager changes that key (regenerate: the accident; import: the
// planned change).
//
// Flavors are siblings: the SEPM-style one is in sepm*.go; another vendor's
// protocol is a new flavor registered in the flavors map, reusing the
// listeners, identity, key changes, counters and admin endpoints here.
package manager

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/legacygate/legacygate/integration/certs"
)

// Config configures a Manager. The zero value of each field means its default.
type Config struct {
	// Flavor is the vendor protocol: "sepm" (default), "checkpoint" or
	// "policyserver".
	Flavor string
	// HTTPSAddr is the HTTPS listener's address, e.g. "127.0.0.1:0" for a
	// free port. Empty: no HTTPS listener.
	HTTPSAddr string
	// HTTPAddr is the plain HTTP listener's address (SEPM's 8014). It also
	// serves the admin endpoints, to loopback clients only. Empty: none.
	HTTPAddr string
	// TLSMin and TLSMax bound the TLS versions the HTTPS listener accepts
	// (crypto/tls constants). Defaults: TLS 1.0 and TLS 1.2, as an old
	// manager's Apache.
	TLSMin, TLSMax uint16
	// CipherSuites for TLS 1.0-1.2. Default: LegacyCipherSuites.
	CipherSuites []uint16
	// Cert is the kind of certificate the manager generates for itself and
	// on Regenerate. Default: certs.Modern.
	Cert certs.Kind
	// CommonName of generated certificates. Default: "sepm.legacygate.test".
	CommonName string
	// Initial is the key pair to start with. Default: a new one of kind Cert.
	Initial *certs.Pair
	// Sign is the XML-DSig method: SignRSASHA256 (default) or SignRSASHA1.
	Sign string
	// ProfileSize is the approximate size in bytes of the signed policy
	// document. Default 100 KiB; at least 4 KiB.
	ProfileSize int
	// ContentSize is the size in bytes of every definitions file served at
	// /content/{GUID}/{revision}/{file} (sepm flavor). Default 4 MiB.
	ContentSize int64
	// MaxLogBytes is the largest log upload accepted. Default 300 KiB.
	MaxLogBytes int64
	// MaxHosts bounds how many registered clients the manager remembers;
	// registrations beyond it are refused with 503. Default 200,000.
	MaxHosts int
	// HeartbeatSeconds is the heartbeat interval written into the
	// communication settings (or heartbeat answers). Default 300; 60 for
	// the checkpoint flavor.
	HeartbeatSeconds int
	// ServerAddress is the host written into the communication settings'
	// server list. Default: the IP the listeners are bound to.
	ServerAddress string
	// Dir, if set, receives tls.crt, tls.key, signing.crt and pin, and for
	// the sepm flavor sylink.xml (the signed SyLink clients download),
	// rewritten on every key change.
	Dir string
	// NextDir holds next.crt and next.key, the pair Import switches to. They
	// are created there (kind Cert) if absent, and read again on each Import.
	NextDir string
	// Next is the pair Import switches to when NextDir is empty.
	Next *certs.Pair
	// Wire is the sepm flavor's query format: WireReadable (default,
	// ?action=…&hostid=…) or WireReal (POST ?h=<hex> obfuscated with the
	// KCS the SyLink carries, and definitions at /content/…).
	Wire string
	// Capacity, if above zero, is how many client requests a second the
	// manager answers; above it, 503 without Retry-After, as an overloaded
	// IIS answers (503.2). Default 0: unlimited.
	Capacity int
	// Log receives one line per event (start, key change, serving errors);
	// it must be safe for concurrent writes. Default: discard.
	Log io.Writer
}

// flavor is one vendor's client protocol on top of the shared manager.
type flavor interface {
	// endpoints lists the names requests are counted under.
	endpoints() []string
	// handler serves the client endpoints, on both listeners.
	handler() http.Handler
	// rebuild makes the signed documents for id: at Start, and after
	// Regenerate or Import, when a real manager publishes new settings and
	// re-signs its policies. Calls never overlap (Manager.changeMu).
	rebuild(id *identity) error
	// status is what the admin endpoints report besides the pin.
	status() map[string]string
}

var flavors = map[string]func(*Manager) flavor{
	"sepm":         newSEPM,
	"checkpoint":   newCheckpoint,
	"policyserver": newPolicyServer,
}

// defaultHeartbeat is each flavor's heartbeat interval in seconds when
// Config.HeartbeatSeconds is 0 (Check Point's default is 60 s).
var defaultHeartbeat = map[string]int{"checkpoint": 60}

// Flavors lists the flavor names New accepts.
func Flavors() []string {
	names := make([]string, 0, len(flavors))
	for n := range flavors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Counter names shared by every flavor.
const (
	CountBad   = "bad"   // requests answered 400
	CountAdmin = "admin" // admin requests, accepted or not
)

// Manager is an emulated manager. Create it with New, then Start it.
type Manager struct {
	cfg    Config
	flavor flavor
	id     atomic.Pointer[identity]
	fault  atomic.Pointer[Fault]
	// handshakes counts ClientHellos on the HTTPS listener (full and
	// resumed handshakes alike): what a gateway's pool costs the manager.
	handshakes atomic.Int64
	counts     map[string]*atomic.Int64 // fixed at New: keys come from the flavor, never from clients

	contentBytes atomic.Int64 // /content body bytes sent (content.go)

	changeMu sync.Mutex // serialises key changes

	tlsConfig  *tls.Config
	httpsLn    net.Listener
	httpLn     net.Listener
	servers    []*http.Server
	started    bool
	closeOnce  sync.Once
	closeError error
}

// New checks cfg, fills its defaults and makes the manager's first key pair.
func New(cfg Config) (*Manager, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg}
	pair := cfg.Initial
	if pair == nil {
		var err error
		if pair, err = certs.New(cfg.Cert, cfg.CommonName, 2048); err != nil {
			return nil, err
		}
	}
	if cfg.NextDir != "" {
		next, err := LoadOrCreateNext(cfg.NextDir, cfg.Cert, cfg.CommonName)
		if err != nil {
			return nil, fmt.Errorf("NextDir: %w", err)
		}
		m.cfg.Next = next
	}
	m.id.Store(newIdentity(pair, 1))
	m.flavor = flavors[cfg.Flavor](m)
	m.counts = map[string]*atomic.Int64{CountBad: {}, CountAdmin: {}, CountOverloaded: {}}
	for _, e := range m.flavor.endpoints() {
		m.counts[e] = &atomic.Int64{}
	}
	return m, nil
}

func (c *Config) setDefaults() error {
	if c.Flavor == "" {
		c.Flavor = "sepm"
	}
	if _, ok := flavors[c.Flavor]; !ok {
		return fmt.Errorf("Flavor: unknown flavor %q, want one of %v", c.Flavor, Flavors())
	}
	if c.HTTPSAddr == "" && c.HTTPAddr == "" {
		return errors.New("HTTPSAddr, HTTPAddr: at least one listener is needed")
	}
	if c.TLSMin == 0 {
		c.TLSMin = tls.VersionTLS10
	}
	if c.TLSMax == 0 {
		c.TLSMax = tls.VersionTLS12
	}
	if c.TLSMin < tls.VersionTLS10 || c.TLSMin > tls.VersionTLS13 {
		return fmt.Errorf("TLSMin: unsupported version 0x%04x", c.TLSMin)
	}
	if c.TLSMax < tls.VersionTLS10 || c.TLSMax > tls.VersionTLS13 {
		return fmt.Errorf("TLSMax: unsupported version 0x%04x", c.TLSMax)
	}
	if c.TLSMin > c.TLSMax {
		return fmt.Errorf("TLSMin: %s is above TLSMax %s", versionName(c.TLSMin), versionName(c.TLSMax))
	}
	if c.CipherSuites == nil {
		c.CipherSuites = LegacyCipherSuites
	}
	if c.Cert == "" {
		c.Cert = certs.Modern
	}
	if _, err := certs.ParseKind(string(c.Cert)); err != nil {
		return fmt.Errorf("Cert: %w", err)
	}
	if c.CommonName == "" {
		c.CommonName = "sepm.legacygate.test"
	}
	if c.Sign == "" {
		c.Sign = SignRSASHA256
	}
	if _, ok := signatureMethods[c.Sign]; !ok {
		return fmt.Errorf("Sign: unknown signature method %q, want %s or %s", c.Sign, SignRSASHA256, SignRSASHA1)
	}
	if c.ProfileSize == 0 {
		c.ProfileSize = 100 << 10
	}
	if c.ProfileSize < 4<<10 {
		return fmt.Errorf("ProfileSize: %d bytes is below the 4096-byte minimum", c.ProfileSize)
	}
	if c.MaxLogBytes == 0 {
		c.MaxLogBytes = 300 << 10
	}
	if c.MaxLogBytes < 0 {
		return fmt.Errorf("MaxLogBytes: %d is negative", c.MaxLogBytes)
	}
	if c.MaxHosts == 0 {
		c.MaxHosts = 200_000
	}
	if c.MaxHosts < 0 {
		return fmt.Errorf("MaxHosts: %d is negative", c.MaxHosts)
	}
	if c.HeartbeatSeconds == 0 {
		c.HeartbeatSeconds = cmp.Or(defaultHeartbeat[c.Flavor], 300)
	}
	if c.HeartbeatSeconds < 0 {
		return fmt.Errorf("HeartbeatSeconds: %d is negative", c.HeartbeatSeconds)
	}
	switch c.Wire {
	case "":
		c.Wire = WireReadable
	case WireReadable:
	case WireReal:
		if c.Flavor != "sepm" {
			return fmt.Errorf("Wire: %q is for the sepm flavor only", c.Wire)
		}
	default:
		return fmt.Errorf("Wire: unknown wire %q, want %q or %q", c.Wire, WireReadable, WireReal)
	}
	if c.ContentSize == 0 {
		c.ContentSize = DefaultContentSize
	}
	if c.ContentSize < 0 || c.ContentSize > 1<<30 {
		return fmt.Errorf("ContentSize: %d bytes, want 1 to 1 GiB", c.ContentSize)
	}
	if c.Capacity < 0 {
		return fmt.Errorf("Capacity: %d is negative", c.Capacity)
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

// Start binds the listeners, signs the documents and serves until Close.
func (m *Manager) Start() error {
	m.changeMu.Lock()
	defer m.changeMu.Unlock()
	if m.started {
		return errors.New("manager already started")
	}
	m.started = true
	if err := m.listen(); err != nil {
		m.closeListeners()
		return err
	}
	id := m.id.Load()
	if err := m.flavor.rebuild(id); err != nil {
		m.closeListeners()
		return err
	}
	if err := m.publish(id); err != nil {
		m.closeListeners()
		return err
	}
	clients := m.withFault(m.withCapacity(m.flavor.handler()))
	if m.httpsLn != nil {
		m.serve(m.newServer(clients), tls.NewListener(m.httpsLn, m.tlsConfig))
	}
	if m.httpLn != nil {
		m.serve(m.newServer(m.plainHandler(clients)), m.httpLn)
	}
	m.logStart(id)
	return nil
}

func (m *Manager) listen() error {
	var err error
	if m.cfg.HTTPSAddr != "" {
		if m.httpsLn, err = net.Listen("tcp", m.cfg.HTTPSAddr); err != nil {
			return fmt.Errorf("HTTPS listener: %w", err)
		}
		m.tlsConfig = m.serverTLSConfig()
	}
	if m.cfg.HTTPAddr != "" {
		if m.httpLn, err = net.Listen("tcp", m.cfg.HTTPAddr); err != nil {
			return fmt.Errorf("HTTP listener: %w", err)
		}
	}
	return nil
}

func (m *Manager) closeListeners() {
	for _, ln := range []net.Listener{m.httpsLn, m.httpLn} {
		if ln != nil {
			ln.Close()
		}
	}
}

// connKey carries the key generation a connection was accepted under.
type connKey struct{}

func (m *Manager) newServer(h http.Handler) *http.Server {
	srv := &http.Server{
		Handler:           m.webServer(h),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(m.cfg.Log, "manager: ", 0),
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, m.id.Load().gen)
		},
	}
	m.servers = append(m.servers, srv)
	return srv
}

// webServer adds what the manager's Apache does around every handler: its
// banner headers, and the end of keep-alive connections opened before the
// last key change, after their current response (a real manager restarts
// its web server to load a new certificate, so clients reconnect and see it).
func (m *Manager) webServer(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gen, ok := r.Context().Value(connKey{}).(uint64); ok && gen != m.id.Load().gen {
			w.Header().Set("Connection", "close")
		}
		w.Header().Set("Server", "Apache")
		w.Header().Set("X-Powered-By", "Servlet/3.0")
		h.ServeHTTP(w, r)
	})
}

func (m *Manager) serve(srv *http.Server, ln net.Listener) {
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(m.cfg.Log, "manager: serving %s stopped: %v\n", ln.Addr(), err)
		}
	}()
}

// Close stops both listeners and drops open connections.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		for _, srv := range m.servers {
			if err := srv.Close(); err != nil && m.closeError == nil {
				m.closeError = err
			}
		}
		if len(m.servers) == 0 {
			m.closeListeners()
		}
	})
	return m.closeError
}

// Addrs are the bound listener addresses ("" for a listener not configured).
type Addrs struct {
	HTTPS string
	HTTP  string
}

// Addrs returns where the manager listens; valid after Start.
func (m *Manager) Addrs() Addrs {
	var a Addrs
	if m.httpsLn != nil {
		a.HTTPS = m.httpsLn.Addr().String()
	}
	if m.httpLn != nil {
		a.HTTP = m.httpLn.Addr().String()
	}
	return a
}

// Pin is the legacy_tls pin of the manager's current certificate.
func (m *Manager) Pin() string { return m.id.Load().pin }

// SigningCert is the certificate that signs documents now; it is also the
// TLS certificate.
func (m *Manager) SigningCert() *x509.Certificate { return m.id.Load().pair.Cert }

// Pair is the manager's current key pair.
func (m *Manager) Pair() *certs.Pair { return m.id.Load().pair }

// NextCert is the certificate Import would switch to, or nil if none is
// loaded. With NextDir, Import reads the files again.
func (m *Manager) NextCert() *x509.Certificate {
	m.changeMu.Lock()
	defer m.changeMu.Unlock()
	if m.cfg.Next == nil {
		return nil
	}
	return m.cfg.Next.Cert
}

// Config returns the configuration with its defaults filled in.
func (m *Manager) Config() Config {
	m.changeMu.Lock()
	defer m.changeMu.Unlock()
	return m.cfg
}

// Requests returns how many requests were counted under endpoint (one of
// the flavor's endpoint names, CountBad or CountAdmin); 0 for other names.
func (m *Manager) Requests(endpoint string) int64 {
	if c, ok := m.counts[endpoint]; ok {
		return c.Load()
	}
	return 0
}

// RequestCounts returns every counter.
func (m *Manager) RequestCounts() map[string]int64 {
	out := make(map[string]int64, len(m.counts))
	for name, c := range m.counts {
		out[name] = c.Load()
	}
	return out
}

// TotalRequests is the sum of every counter.
func (m *Manager) TotalRequests() int64 {
	var n int64
	for _, c := range m.counts {
		n += c.Load()
	}
	return n
}

func (m *Manager) count(endpoint string) { m.counts[endpoint].Add(1) }

// Regenerate replaces the key pair with a new random one of the configured
// kind: the accident that orphans clients which trust the old certificate.
func (m *Manager) Regenerate() error {
	m.changeMu.Lock()
	defer m.changeMu.Unlock()
	pair, err := certs.New(m.cfg.Cert, m.cfg.CommonName, 2048)
	if err != nil {
		return fmt.Errorf("regenerate: %w", err)
	}
	return m.switchTo(pair, "regenerated")
}

// Import switches to the key pair prepared beforehand (NextDir, read again
// now, or Config.Next): the planned change.
func (m *Manager) Import() error {
	m.changeMu.Lock()
	defer m.changeMu.Unlock()
	next := m.cfg.Next
	if m.cfg.NextDir != "" {
		var err error
		next, err = LoadPair(filepath.Join(m.cfg.NextDir, NextCertFile), filepath.Join(m.cfg.NextDir, NextKeyFile))
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		m.cfg.Next = next
	}
	if next == nil {
		return errors.New("import: no next key pair (set NextDir or Next)")
	}
	if next.Key.PublicKey.Equal(&m.id.Load().pair.Key.PublicKey) {
		return errors.New("import: the next key pair is already the manager's key")
	}
	return m.switchTo(next, "imported")
}

// switchTo makes pair the manager's identity: new documents are signed and
// published before the TLS listener presents the new certificate.
func (m *Manager) switchTo(pair *certs.Pair, event string) error {
	old := m.id.Load()
	id := newIdentity(pair, old.gen+1)
	if m.started {
		if err := m.flavor.rebuild(id); err != nil {
			return fmt.Errorf("%s: %w", event, err)
		}
	}
	m.id.Store(id)
	if m.tlsConfig != nil {
		// Sessions resumed from tickets of the old key would skip the new
		// certificate; a restarted manager has no old tickets.
		var key [32]byte
		rand.Read(key[:])
		m.tlsConfig.SetSessionTicketKeys([][32]byte{key})
	}
	if err := m.publish(id); err != nil {
		return fmt.Errorf("%s: %w", event, err)
	}
	fmt.Fprintf(m.cfg.Log, "%s: pin %s (was %s) %s\n", event, id.pin, old.pin, formatStatus(m.flavor.status()))
	return nil
}

// settingsPublisher is a flavor with a signed communication-settings
// document (SEPM's SyLink.xml), which publish writes to Config.Dir too, so a
// fleet can start from exactly what the manager serves.
type settingsPublisher interface {
	settingsDocument() []byte
}

func (m *Manager) publish(id *identity) error {
	if m.cfg.Dir == "" {
		return nil
	}
	if err := writeIdentity(m.cfg.Dir, id); err != nil {
		return err
	}
	if p, ok := m.flavor.(settingsPublisher); ok {
		return writeFileAtomic(filepath.Join(m.cfg.Dir, SyLinkFile), p.settingsDocument(), 0o644)
	}
	return nil
}

func (m *Manager) logStart(id *identity) {
	a := m.Addrs()
	c := m.cfg
	fmt.Fprintf(m.cfg.Log, "manager: flavor %s, https %q (TLS %s-%s, cert %s, sign %s), http %q\n",
		c.Flavor, a.HTTPS, versionName(c.TLSMin), versionName(c.TLSMax), c.Cert, c.Sign, a.HTTP)
	fmt.Fprintf(m.cfg.Log, "pin %s %s\n", id.pin, formatStatus(m.flavor.status()))
	if c.Next != nil {
		fmt.Fprintf(m.cfg.Log, "next pin %s (import with SIGUSR1 or POST /admin/import)\n", certs.Pin(c.Next.Cert))
	}
}

func formatStatus(s map[string]string) string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := ""
	for i, k := range keys {
		if i > 0 {
			out += " "
		}
		out += fmt.Sprintf("%s=%q", k, s[k])
	}
	return out
}

// plainHandler serves the client endpoints and, to loopback clients only,
// the admin endpoints.
func (m *Manager) plainHandler(clients http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", clients)
	mux.HandleFunc("/admin/regenerate", m.admin(m.Regenerate))
	mux.HandleFunc("/admin/import", m.admin(m.Import))
	return mux
}

// isLoopback reports whether a request's RemoteAddr is a loopback address.
func isLoopback(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (m *Manager) admin(change func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		m.count(CountAdmin)
		if !isLoopback(r.RemoteAddr) {
			http.Error(w, "admin endpoints answer loopback clients only", http.StatusForbidden)
			return
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "use POST", http.StatusMethodNotAllowed)
			return
		}
		if err := change(); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		status := m.flavor.status()
		status["pin"] = m.Pin()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(status)
	}
}
