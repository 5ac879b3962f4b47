package rotation

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/internal/rotationtable"
	"github.com/legacygate/legacygate/policyguard"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// Default and largest page of stragglers.
const (
	defaultStragglerPage = 50
	maxStragglerPage     = rotationtable.MaxStragglerPage
)

// AdminAPI serves the rotation's progress on Caddy's admin endpoint
// (module admin.api.legacygate):
//
//	GET /legacygate/rotation[?page=N&size=M]
//
// It reports on the running legacygate app or, without one, on the signing
// keys of the running policy_guard handlers.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.legacygate",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/legacygate/rotation", Handler: caddy.AdminHandlerFunc(serveRotationStatus)}}
}

// RotationStatus is the JSON of GET /legacygate/rotation.
type RotationStatus struct {
	Now               time.Time                     `json:"now"`
	App               bool                          `json:"app"`      // false: no legacygate global option
	Rotation          bool                          `json:"rotation"` // false: no rotation configured
	Window            *rotationtable.Window         `json:"window,omitempty"`
	Grace             string                        `json:"grace,omitempty"`
	GraceEnds         *time.Time                    `json:"grace_ends,omitempty"`
	ConfirmHeartbeats uint32                        `json:"confirm_heartbeats,omitempty"`
	Keys              map[string]string             `json:"keys"` // role → key id
	SigningKeys       []SigningKeyInfo              `json:"signing_keys"`
	Counts            *rotationtable.RotationCounts `json:"counts,omitempty"`
	ConfirmedPercent  float64                       `json:"confirmed_percent"`
	// PlaintextClients is null when nothing tracks clients: the app counts
	// them only during a rotation.
	PlaintextClients *int           `json:"plaintext_clients"`
	Stragglers       *StragglerPage `json:"stragglers,omitempty"`
	// NeedsAgentUpgrade are the clients plaintext_bridge keeps on plain
	// HTTP (its keep file): agents that speak no TLS 1.2, ordered by id.
	NeedsAgentUpgrade []KeptClient `json:"needs_agent_upgrade,omitempty"`
}

// KeptClient is a client kept on plain HTTP, with its progress when the
// rotation tracks it.
type KeptClient struct {
	Client    string                 `json:"client"`
	Seen      bool                   `json:"seen"` // tracked by the rotation
	Progress  rotationtable.Progress `json:"progress,omitempty"`
	LastSeen  time.Time              `json:"last_seen,omitzero"`
	Plaintext bool                   `json:"plaintext"` // its latest heartbeat came over plain HTTP
}

// SigningKeyInfo describes a signing key as an operator checks it against
// the files and the clients' trust: role is "current" or "next" for the
// app's keys, "policy_guard" for a handler's own signing_key.
type SigningKeyInfo struct {
	Role        string    `json:"role"`
	KeyID       string    `json:"key_id"`
	Subject     string    `json:"subject"`
	NotAfter    time.Time `json:"not_after"`
	Pin         string    `json:"pin"`         // sha256/<base64 of the SPKI's SHA-256>
	Fingerprint string    `json:"fingerprint"` // hex SHA-256 of the certificate
}

func keyInfo(role string, s *policyguard.Signer) SigningKeyInfo {
	c := s.Cert()
	return SigningKeyInfo{Role: role, KeyID: s.KeyID(), Subject: c.Subject.String(), NotAfter: c.NotAfter.UTC(), Pin: pinOf(c), Fingerprint: policyguard.Fingerprint(c)}
}

func pinOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256/" + base64.StdEncoding.EncodeToString(sum[:])
}

// handlerKeys are the signing keys of provisioned policy_guard handlers
// that sign with their own signing_key, counted by key id: one entry per
// distinct key, whatever the number of handlers and reloads.
var handlerKeys = struct {
	sync.Mutex
	keys map[string]*handlerKey
}{keys: map[string]*handlerKey{}}

type handlerKey struct {
	signer *policyguard.Signer
	users  int
}

// RegisterHandlerKey lists s in the status a gateway without the legacygate
// app reports. Call the returned function from the handler's Cleanup.
func RegisterHandlerKey(s *policyguard.Signer) (unregister func()) {
	handlerKeys.Lock()
	defer handlerKeys.Unlock()
	k := handlerKeys.keys[s.KeyID()]
	if k == nil {
		k = &handlerKey{signer: s}
		handlerKeys.keys[s.KeyID()] = k
	}
	k.users++
	var once sync.Once
	return func() {
		once.Do(func() {
			handlerKeys.Lock()
			defer handlerKeys.Unlock()
			if k.users--; k.users == 0 {
				delete(handlerKeys.keys, s.KeyID())
			}
		})
	}
}

// handlerKeyInfos are the registered handler keys, ordered by key id.
func handlerKeyInfos() []SigningKeyInfo {
	handlerKeys.Lock()
	defer handlerKeys.Unlock()
	out := make([]SigningKeyInfo, 0, len(handlerKeys.keys))
	for _, k := range handlerKeys.keys {
		out = append(out, keyInfo("policy_guard", k.signer))
	}
	slices.SortFunc(out, func(a, b SigningKeyInfo) int { return strings.Compare(a.KeyID, b.KeyID) })
	return out
}

// StragglerPage is one page of unconfirmed clients, longest silent first.
type StragglerPage struct {
	Page    int                       `json:"page"`
	Size    int                       `json:"size"`
	Total   int                       `json:"total"`
	Clients []rotationtable.Straggler `json:"clients"`
}

func serveRotationStatus(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed: use GET", r.Method)}
	}
	page, size, err := pageArgs(r)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	st := Status(activeApp.Load(), page, size)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(st)
}

// Status is the operator's view of the rotation, as GET /legacygate/rotation,
// `legacygate rotation status` and the legacygate_dashboard page show it:
// app's window, clients and keys (a nil app: no legacygate global option),
// with one page of stragglers, plus the keys of the policy_guard handlers
// that sign with their own signing_key.
func Status(a *App, page, size int) RotationStatus {
	st := RotationStatus{Now: time.Now().UTC(), Keys: map[string]string{}}
	if a != nil {
		st = a.status(page, size)
	}
	st.SigningKeys = append(st.SigningKeys, handlerKeyInfos()...)
	return st
}

// pageArgs reads ?page= (from 1) and ?size= (1 to 1000, default 50), each
// at most once.
func pageArgs(r *http.Request) (page, size int, err error) {
	page, size = 1, defaultStragglerPage
	v, _, err := query.Single(r.URL.RawQuery, "page")
	if err != nil {
		return 0, 0, err
	}
	if v != "" {
		if page, err = strconv.Atoi(v); err != nil || page < 1 {
			return 0, 0, fmt.Errorf("page: %q is not a page number (1, 2, …)", v)
		}
	}
	if v, _, err = query.Single(r.URL.RawQuery, "size"); err != nil {
		return 0, 0, err
	}
	if v != "" {
		if size, err = strconv.Atoi(v); err != nil || size < 1 || size > maxStragglerPage {
			return 0, 0, fmt.Errorf("size: %q is not a page size from 1 to %d", v, maxStragglerPage)
		}
	}
	return page, size, nil
}

// status is the operator's view of the rotation.
func (a *App) status(page, size int) RotationStatus {
	now := a.now().UTC()
	st := RotationStatus{
		Now:               now,
		App:               true,
		Keys:              map[string]string{roleCurrent: a.current.KeyID()},
		SigningKeys:       []SigningKeyInfo{keyInfo(roleCurrent, a.current)},
		NeedsAgentUpgrade: a.keptClients(),
	}
	if a.next != nil {
		st.SigningKeys = append(st.SigningKeys, keyInfo(roleNext, a.next))
	}
	if a.table == nil {
		return st
	}
	p := a.table.Policy()
	ends := p.Window.End.Add(p.Grace).UTC()
	c := a.table.Counts(now)
	list, total := a.table.Stragglers(page, size)
	st.Rotation = true
	st.Window = &rotationtable.Window{Start: p.Window.Start.UTC(), End: p.Window.End.UTC()}
	st.Grace = p.Grace.String()
	st.GraceEnds = &ends
	st.ConfirmHeartbeats = p.ConfirmHeartbeats
	st.Keys[roleNext] = a.next.KeyID()
	st.Counts = &c
	st.ConfirmedPercent = confirmedRatio(c) * 100
	st.PlaintextClients = &c.Plaintext
	st.Stragglers = &StragglerPage{Page: page, Size: size, Total: total, Clients: list}
	return st
}

// Interface guards.
var _ caddy.AdminRouter = (*AdminAPI)(nil)
