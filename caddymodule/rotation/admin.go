package rotation

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/internal/rotationtable"
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
// It reports on the running legacygate app.
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
	Rotation          bool                          `json:"rotation"` // false: no rotation configured
	Window            *rotationtable.Window         `json:"window,omitempty"`
	Grace             string                        `json:"grace,omitempty"`
	GraceEnds         *time.Time                    `json:"grace_ends,omitempty"`
	ConfirmHeartbeats uint32                        `json:"confirm_heartbeats,omitempty"`
	Keys              map[string]string             `json:"keys"` // role → key id
	Counts            *rotationtable.RotationCounts `json:"counts,omitempty"`
	ConfirmedPercent  float64                       `json:"confirmed_percent"`
	PlaintextClients  int                           `json:"plaintext_clients"`
	Stragglers        *StragglerPage                `json:"stragglers,omitempty"`
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
	a := activeApp.Load()
	if a == nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("the legacygate app is not running: configure the legacygate global option")}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(a.status(page, size))
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
	st := RotationStatus{Now: now, Keys: map[string]string{roleCurrent: a.current.KeyID()}}
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
	st.PlaintextClients = c.Plaintext
	st.Stragglers = &StragglerPage{Page: page, Size: size, Total: total, Clients: list}
	return st
}

// Interface guards.
var _ caddy.AdminRouter = (*AdminAPI)(nil)
