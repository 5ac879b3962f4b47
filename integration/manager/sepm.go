package manager

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/legacygate/legacygate/internal/secars"
)

// SEPM endpoint names, as counted by Manager.Requests.
const (
	CountHello    = ActionHello
	CountRegister = ActionRegister
	CountIndex    = ActionIndex
	CountProfile  = ActionProfile
	CountSyLink   = ActionSyLink
	CountLog      = ActionLog
	CountNotFound = "not_found" // paths outside the client protocol
)

// Client protocol paths of a SEPM-style manager.
const (
	SecarsPath = "/secars/secars.dll"
	SecregPath = "/secreg/secreg.dll"
)

// BadFormatBody is what a SEPM answers, with status 400, to a query it
// cannot use or a host it does not know.
const BadFormatBody = "4 Bad format."

const (
	maxFormBytes = 16 << 10
	maxNameLen   = 255
	defaultGroup = `My Company\Default Group`
)

// sepm is the SEPM-style flavor.
type sepm struct {
	m        *Manager
	domainID string
	kcs      string
	hosts    hostTable
	docs     atomic.Pointer[sepmDocs]
	real     bool         // WireReal: h= queries and definitions downloads
	key      secars.Key   // the h= key, from kcs
	defs     *definitions // the revision the index names, WireReal only
	indexed  hostSet      // hosts whose index request arrived
}

// sepmDocs are the signed documents every client gets, built once per key.
type sepmDocs struct {
	index, profile, sylink      []byte
	profileSerial, sylinkSerial string
}

func newSEPM(m *Manager) flavor {
	s := &sepm{
		m:        m,
		domainID: randomHex(16),
		kcs:      randomHex(16),
		hosts:    hostTable{max: m.cfg.MaxHosts, hosts: map[string]host{}},
		real:     m.cfg.Wire == WireReal,
	}
	s.key, _ = secars.NewKey(s.kcs) // randomHex is always a valid KCS
	if s.real {
		s.defs = newDefinitions()
	}
	return s
}

func (s *sepm) endpoints() []string {
	return []string{CountHello, CountRegister, CountIndex, CountProfile, CountSyLink, CountLog, CountContent, CountNotFound}
}

func (s *sepm) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(SecarsPath, s.secars)
	mux.HandleFunc(SecregPath, s.secreg)
	mux.HandleFunc(ContentPrefix, s.content)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.m.count(CountNotFound)
		http.NotFound(w, r)
	})
	return mux
}

func (s *sepm) status() map[string]string {
	d := s.docs.Load()
	if d == nil {
		return map[string]string{}
	}
	return map[string]string{"profile_serial": d.profileSerial, "sylink_serial": d.sylinkSerial, "kcs": s.kcs}
}

// settingsDocument is the signed SyLink served now.
func (s *sepm) settingsDocument() []byte { return s.docs.Load().sylink }

// rebuild signs the profile and SyLink with id's key. Both serials change on
// every build: after a key change a real manager publishes new communication
// settings (they carry the new certificate) and re-signed policies, and
// clients notice both in their next index.
func (s *sepm) rebuild(id *identity) error {
	now := time.Now()
	var prefix [4]byte
	rand.Read(prefix[:])
	profileSerial := sepmSerial(binary.BigEndian.Uint16(prefix[:2]), now)
	sylinkSerial := sepmSerial(binary.BigEndian.Uint16(prefix[2:]), now)
	size := s.m.cfg.ProfileSize - signatureOverhead(id.pair.Cert.Raw)
	profile, err := signEnveloped(buildProfile(s.domainID, profileSerial, size), id.pair, s.m.cfg.Sign)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	sylink, err := signEnveloped(buildSyLink(s.domainID, s.kcs, s.m.cfg.HeartbeatSeconds, s.servers(id)), id.pair, s.m.cfg.Sign)
	if err != nil {
		return fmt.Errorf("SyLink: %w", err)
	}
	index := buildIndex(s.domainID, md5Hex(profile), profileSerial, now, sylinkSerial)
	if s.real {
		index = s.defs.withContent(index, s.contentSize())
	}
	s.docs.Store(&sepmDocs{
		index:         index,
		profile:       profile,
		sylink:        sylink,
		profileSerial: profileSerial,
		sylinkSerial:  sylinkSerial,
	})
	return nil
}

// servers is the manager itself, as its SyLink lists it.
func (s *sepm) servers(id *identity) []sylinkServer {
	a := s.m.Addrs()
	srv := sylinkServer{address: s.m.cfg.ServerAddress, certDER: id.pair.Cert.Raw}
	for _, l := range []struct {
		addr string
		port *int
	}{{a.HTTPS, &srv.httpsPort}, {a.HTTP, &srv.httpPort}} {
		host, port, err := net.SplitHostPort(l.addr)
		if err != nil {
			continue
		}
		*l.port, _ = strconv.Atoi(port)
		if srv.address == "" {
			srv.address = host
		}
	}
	return []sylinkServer{srv}
}

func (s *sepm) badFormat(w http.ResponseWriter) {
	s.m.count(CountBad)
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusBadRequest)
	io.WriteString(w, BadFormatBody)
}

// secars serves the agent communication endpoint.
func (s *sepm) secars(w http.ResponseWriter, r *http.Request) {
	q, _, err := s.query(r)
	if err != nil {
		s.badFormat(w)
		return
	}
	wantMethod := http.MethodGet
	if q.action == ActionLog || (s.real && q.action != ActionHello) {
		wantMethod = http.MethodPost
	}
	if q.action == ActionRegister || r.Method != wantMethod {
		s.badFormat(w)
		return
	}
	if q.action == ActionHello {
		s.m.count(CountHello)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "OK")
		return
	}
	if !s.hosts.known(q.hostID) {
		s.badFormat(w)
		return
	}
	s.m.count(q.action)
	if q.action == ActionIndex {
		s.indexed.add(q.hostID)
	}
	d := s.docs.Load()
	switch q.action {
	case ActionIndex:
		writeXML(w, d.index)
	case ActionProfile:
		writeXML(w, d.profile)
	case ActionSyLink:
		writeXML(w, d.sylink)
	case ActionLog:
		s.acceptLog(w, r)
	}
}

func writeXML(w http.ResponseWriter, doc []byte) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(doc)))
	w.Write(doc)
}

// acceptLog reads and discards a log upload of at most MaxLogBytes.
func (s *sepm) acceptLog(w http.ResponseWriter, r *http.Request) {
	max := s.m.cfg.MaxLogBytes
	if r.ContentLength > max {
		http.Error(w, fmt.Sprintf("log upload of %d bytes exceeds %d", r.ContentLength, max), http.StatusRequestEntityTooLarge)
		return
	}
	_, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, max))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		http.Error(w, fmt.Sprintf("log upload exceeds %d bytes", max), http.StatusRequestEntityTooLarge)
	case err != nil:
		s.badFormat(w)
	default:
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "OK")
	}
}

// secreg serves registration: POST ?action=register with the form fields
// hostname and group.
func (s *sepm) secreg(w http.ResponseWriter, r *http.Request) {
	q, hostname, err := s.query(r)
	if err != nil || q.action != ActionRegister || r.Method != http.MethodPost {
		s.badFormat(w)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		s.badFormat(w)
		return
	}
	name, group := cmp.Or(r.PostForm.Get("hostname"), hostname), r.PostForm.Get("group")
	if group == "" {
		group = defaultGroup
	}
	if name == "" || len(name) > maxNameLen || len(group) > maxNameLen {
		s.badFormat(w)
		return
	}
	id, err := s.hosts.add(name, group)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	s.m.count(CountRegister)
	writeXML(w, fmt.Appendf(nil, `<Registration HostId="%s" Group="%s"/>`, id, xmlAttr(group)))
}

// query reads a secars or secreg query in the configured wire format, and
// the host name the real wire's registration carries in it.
func (s *sepm) query(r *http.Request) (q sepmQuery, hostname string, err error) {
	if s.real {
		return s.realQuery(r)
	}
	q, err = parseSEPMQuery(r.URL.RawQuery)
	return q, "", err
}

// host is what the manager remembers of a registered client.
type host struct {
	name, group string
}

// hostTable holds registered clients, at most max of them: a full table
// refuses new registrations rather than forgetting clients.
type hostTable struct {
	mu    sync.RWMutex
	max   int
	hosts map[string]host
}

var errTooManyHosts = errors.New("registration refused: the manager's client table is full")

func (t *hostTable) add(name, group string) (string, error) {
	id := strings.ToUpper(randomHex(hostIDLen / 2))
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.hosts) >= t.max {
		return "", errTooManyHosts
	}
	t.hosts[id] = host{name: name, group: group}
	return id, nil
}

func (t *hostTable) known(id string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, ok := t.hosts[id]
	return ok
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return strings.ToUpper(hex.EncodeToString(b))
}
