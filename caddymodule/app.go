package caddymodule

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/policyguard"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("legacygate", parseAppOption)
}

// Defaults of the app.
const (
	defaultClientID        = "{http.request.uri.query.hostid}"
	defaultMaxClients      = 200_000
	defaultPersistInterval = 30 * time.Second
	defaultPurgeAge        = 7 * 24 * time.Hour
	defaultHoldRetryAfter  = 60 * time.Second
	maxHoldRetryAfter      = time.Hour
	defaultHeartbeatPath   = "/secars/secars.dll"
	generatedKeyBits       = 2048
)

// Signing key roles.
const (
	roleCurrent = "current"
	roleNext    = "next"
)

// App is the legacygate app (module legacygate): what several handlers
// share. It holds the gateway's signing keys, the rotation window, every
// client's progress through it, and that progress's persistence in Caddy
// storage.
//
// policy_guard handlers without a signing_key of their own sign with the
// key the app picks for each client: current before the window; inside the
// window and its grace, next only for clients that fetched the settings
// carrying the next certificate and then sent confirm_heartbeats heartbeats;
// next for everyone after the grace. plaintext_bridge handlers ask it
// whether the window is open.
type App struct {
	// SigningKeys are the gateway's policy signing keys: one with role
	// "current" (required) and, for a rotation, one with role "next".
	SigningKeys []SigningKeyConfig `json:"signing_keys,omitempty"`

	// ClientID is the placeholder that names a client, resolved per request.
	// Default: {http.request.uri.query.hostid}. The id is ASCII upper-cased
	// (SEPM host ids are hex GUIDs, which the manager upper-cases too), so
	// case variants are one client. Requests where it resolves to an empty
	// string are never tracked and keep the current key until the grace
	// period is over.
	//
	// A query placeholder must be the whole of client_id; its parameter is
	// matched ignoring case and after decoding. A request that names it
	// more than once (hostid=A&HostId=B), or with a malformed escape, has no
	// client id and is served nothing that depends on one: it is never
	// tracked, plaintext_bridge refuses it (400, duplicate_key or
	// bad_query), and policy_guard signs no payload for it (502, no_signer),
	// since the manager may have answered for the other value.
	ClientID string `json:"client_id,omitempty"`

	// Heartbeat says which requests are heartbeats (a client's index
	// request). policy_guard and plaintext_bridge report each one to the app,
	// once per request. Default: path /secars/secars.dll, query action=index.
	// A request naming one of its query parameters twice is no heartbeat.
	Heartbeat *RequestSpec `json:"heartbeat,omitempty"`

	// Rotation is the key rotation. Without it every payload is signed with
	// the current key.
	Rotation *RotationConfig `json:"rotation,omitempty"`

	// InstanceID names this gateway's progress file in storage. Default:
	// Caddy's instance id, kept in its data directory, so it survives
	// restarts. Gateways sharing storage must have different ids.
	InstanceID string `json:"instance_id,omitempty"`

	// StorageRaw is where generated keys and progress are kept, if not in
	// Caddy's storage (the storage global option). Gateways that act as one
	// must share it.
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`

	storage       certmagic.Storage
	current, next *policyguard.Signer
	queryKey      string // set when ClientID is one query parameter
	heartbeat     requestMatcher
	table         *policyguard.RotationTable
	store         *rotationStore
	logger        *zap.Logger
	now           func() time.Time
	gauges        rotationGauges

	stop chan struct{}
	done chan struct{}
}

// SigningKeyConfig is one signing key: from files, or generated once and
// kept in Caddy storage.
type SigningKeyConfig struct {
	// Role is "current" or "next".
	Role string `json:"role"`
	// KeyFile and CertFile are PEM files: an RSA key (2048, 3072 or 4096
	// bits) and its certificate.
	KeyFile  string `json:"key_file,omitempty"`
	CertFile string `json:"cert_file,omitempty"`
	// Generate names a key kept in Caddy storage under
	// legacygate/keys/<name>.key and .crt. It is made (RSA-2048, self-signed
	// certificate valid ten years) the first time, under a storage lock, so
	// every gateway sharing the storage signs with the same key.
	Generate string `json:"generate,omitempty"`
}

// RotationConfig is a key rotation window and how progress is kept.
type RotationConfig struct {
	// Window is when the next certificate is distributed (RFC 3339 times;
	// start inclusive, end exclusive).
	Window policyguard.Window `json:"window"`
	// ConfirmHeartbeats heartbeats after the anchor fetch confirm a client.
	// Default 3 (the vendor's "three heartbeat cycles").
	ConfirmHeartbeats int `json:"confirm_heartbeats,omitempty"`
	// Grace keeps unconfirmed clients on the current key after the window
	// ends. Default 0.
	Grace caddy.Duration `json:"grace,omitempty"`
	// MaxClients bounds the clients tracked. Default 200,000 (about 150
	// bytes each).
	MaxClients int `json:"max_clients,omitempty"`
	// PersistInterval is how often progress is saved to storage and other
	// instances' progress merged. Default 30s.
	PersistInterval caddy.Duration `json:"persist_interval,omitempty"`
	// PurgeAge deletes other instances' progress files not written for this
	// long (their progress lives on in every instance that merged it).
	// Default 7 days.
	PurgeAge caddy.Duration `json:"purge_age,omitempty"`
	// HoldRetryAfter is the Retry-After of the 503 that answers a signed
	// payload for a client that fetched the next certificate and has not
	// confirmed it (from the window's start until its end + grace). Whole
	// seconds, 1s to 1h. Default 60s: SEPM's longest accelerated heartbeat
	// after a settings change, and well under its 5-minute interval, so
	// the hold does not delay the heartbeats that confirm the client.
	HoldRetryAfter caddy.Duration `json:"hold_retry_after,omitempty"`
}

// RequestSpec picks requests by path and query.
type RequestSpec struct {
	// Path is matched case-insensitively; a trailing * matches any rest.
	Path string `json:"path,omitempty"`
	// Query lists parameters that must have these values. Names and values
	// are matched ignoring ASCII case (action=LOG is a log upload too), names
	// after decoding. A request naming one of these parameters more than
	// once matches no spec, and the handlers that judge it refuse it.
	Query map[string]string `json:"query,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "legacygate",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision loads the keys, builds the rotation table, restores progress
// from storage and registers the gauges.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if a.now == nil {
		a.now = time.Now
	}
	if err := a.Validate(); err != nil {
		return err
	}
	if a.ClientID == "" {
		a.ClientID = defaultClientID
	}
	a.queryKey, _ = query.Placeholder(a.ClientID)
	spec := RequestSpec{Path: defaultHeartbeatPath, Query: map[string]string{"action": "index"}}
	if a.Heartbeat != nil {
		spec = *a.Heartbeat
	}
	a.heartbeat = newRequestMatcher(spec)
	if err := a.provisionStorage(ctx); err != nil {
		return err
	}
	if err := a.loadKeys(ctx); err != nil {
		return err
	}
	gauges, err := registerRotationGauges(ctx.GetMetricsRegistry())
	if err != nil {
		return fmt.Errorf("legacygate: %w", err)
	}
	a.gauges = gauges
	if a.Rotation == nil {
		a.updateGauges()
		return nil
	}
	return a.provisionRotation(ctx)
}

func (a *App) provisionStorage(ctx caddy.Context) error {
	if a.StorageRaw == nil {
		a.storage = ctx.Storage()
		return nil
	}
	mod, err := ctx.LoadModule(a, "StorageRaw")
	if err != nil {
		return fmt.Errorf("legacygate: storage: %w", err)
	}
	if a.storage, err = mod.(caddy.StorageConverter).CertMagicStorage(); err != nil {
		return fmt.Errorf("legacygate: storage: %w", err)
	}
	return nil
}

func (a *App) provisionRotation(ctx caddy.Context) error {
	r := a.Rotation
	table, err := policyguard.NewRotationTable(policyguard.RotationPolicy{
		Window:            r.Window,
		ConfirmHeartbeats: uint32(r.ConfirmHeartbeats),
		Grace:             time.Duration(r.Grace),
	}, r.maxClients())
	if err != nil {
		return fmt.Errorf("legacygate: rotation: %w", err)
	}
	a.table = table
	id, err := a.instanceID()
	if err != nil {
		return fmt.Errorf("legacygate: instance_id: %w", err)
	}
	store := newRotationStore(a.storage, r.Window, id, r.purgeAge(), a.logger)
	loadCtx, cancel := context.WithTimeout(ctx, storageTimeout)
	defer cancel()
	st, err := store.load(loadCtx, a.table, a.now())
	if err != nil {
		return fmt.Errorf("legacygate: rotation: restoring progress from storage: %w", err)
	}
	// Only a store whose progress was restored is ever saved (Cleanup).
	a.store = store
	a.takeOverRunningTable()
	a.logger.Info("rotation progress restored",
		zap.String("instance", id), zap.Int("files", st.files), zap.Int("clients", a.table.Counts(a.now()).Tracked))
	a.updateGauges()
	return nil
}

// takeOverRunningTable merges the progress of the app still running in this
// process (a reload provisions the new configuration before the old one
// stops), so that nothing it recorded since its last save is missing until
// the old app's final save is merged at the next interval.
func (a *App) takeOverRunningTable() {
	old := activeApp.Load()
	if old == nil || old == a || old.table == nil {
		return
	}
	if _, err := a.table.Merge(old.table.Snapshot(), a.now()); err != nil {
		a.logger.Info("not taking over the running rotation's progress", zap.Error(err))
	}
}

func (a *App) instanceID() (string, error) {
	if a.InstanceID != "" {
		return a.InstanceID, nil
	}
	id, err := caddy.InstanceID()
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

func (r *RotationConfig) maxClients() int {
	if r.MaxClients == 0 {
		return defaultMaxClients
	}
	return r.MaxClients
}

func (r *RotationConfig) persistInterval() time.Duration {
	if r.PersistInterval == 0 {
		return defaultPersistInterval
	}
	return time.Duration(r.PersistInterval)
}

func (r *RotationConfig) holdRetryAfter() time.Duration {
	if r.HoldRetryAfter == 0 {
		return defaultHoldRetryAfter
	}
	return time.Duration(r.HoldRetryAfter)
}

func (r *RotationConfig) purgeAge() time.Duration {
	if r.PurgeAge == 0 {
		return defaultPurgeAge
	}
	return time.Duration(r.PurgeAge)
}

// namePattern is what a generated key's name and an instance id may be:
// they become storage keys.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Validate names the first wrong field.
func (a *App) Validate() error {
	roles := map[string]bool{}
	for _, k := range a.SigningKeys {
		if err := k.validate(); err != nil {
			return err
		}
		if roles[k.Role] {
			return fmt.Errorf("legacygate: signing_key %s: given twice", k.Role)
		}
		roles[k.Role] = true
	}
	switch {
	case !roles[roleCurrent]:
		return errors.New("legacygate: signing_key current: required (the key clients trust now)")
	case a.Rotation != nil && !roles[roleNext]:
		return errors.New("legacygate: signing_key next: a rotation needs the next key")
	case a.Rotation == nil && roles[roleNext]:
		return errors.New("legacygate: rotation: signing_key next is set but no rotation window is configured")
	case a.InstanceID != "" && !namePattern.MatchString(a.InstanceID):
		return fmt.Errorf("legacygate: instance_id: %q is not a name of letters, digits, '.', '_' or '-' (at most 64)", a.InstanceID)
	}
	if a.Heartbeat != nil && a.Heartbeat.Path == "" && len(a.Heartbeat.Query) == 0 {
		return errors.New("legacygate: heartbeat: give a path, query parameters, or both")
	}
	if _, whole := query.Placeholder(a.ClientID); !whole && query.MentionsPlaceholder(a.ClientID) {
		return fmt.Errorf("legacygate: client_id: %q: a query placeholder must be the whole client_id, such as {query.hostid}", a.ClientID)
	}
	if a.Rotation != nil {
		return a.Rotation.validate()
	}
	return nil
}

func (k SigningKeyConfig) validate() error {
	if k.Role != roleCurrent && k.Role != roleNext {
		return fmt.Errorf("legacygate: signing_key: role %q is neither current nor next", k.Role)
	}
	files := k.KeyFile != "" || k.CertFile != ""
	switch {
	case files && k.Generate != "":
		return fmt.Errorf("legacygate: signing_key %s: give key and certificate files or generate, not both", k.Role)
	case k.Generate != "" && !namePattern.MatchString(k.Generate):
		return fmt.Errorf("legacygate: signing_key %s: generate: %q is not a name of letters, digits, '.', '_' or '-'", k.Role, k.Generate)
	case k.Generate == "" && (k.KeyFile == "" || k.CertFile == ""):
		return fmt.Errorf("legacygate: signing_key %s: want <key_file> <cert_file>, or generate", k.Role)
	}
	return nil
}

func (r *RotationConfig) validate() error {
	w := r.Window
	switch {
	case w.Start.IsZero() || w.End.IsZero():
		return errors.New("legacygate: rotation: window: a start and an end are required")
	case !w.End.After(w.Start):
		return fmt.Errorf("legacygate: rotation: window: end %s is not after start %s (inverted)",
			w.End.Format(time.RFC3339), w.Start.Format(time.RFC3339))
	case r.ConfirmHeartbeats < 0:
		return fmt.Errorf("legacygate: rotation: confirm_heartbeats: %d is less than 1", r.ConfirmHeartbeats)
	case r.Grace < 0:
		return fmt.Errorf("legacygate: rotation: grace: %s is negative", time.Duration(r.Grace))
	case r.MaxClients < 0 || r.MaxClients > 1<<30:
		return fmt.Errorf("legacygate: rotation: max_clients: %d is out of range (1 to 2^30)", r.MaxClients)
	case r.PersistInterval < 0 || (r.PersistInterval > 0 && time.Duration(r.PersistInterval) < 10*time.Millisecond):
		return fmt.Errorf("legacygate: rotation: persist_interval: %s is below 10ms", time.Duration(r.PersistInterval))
	case r.HoldRetryAfter < 0 || r.holdRetryAfter() < time.Second || r.holdRetryAfter() > maxHoldRetryAfter ||
		r.holdRetryAfter()%time.Second != 0:
		return fmt.Errorf("legacygate: rotation: hold_retry_after: %s is not whole seconds from 1s to 1h (it is sent as Retry-After)", r.holdRetryAfter())
	case r.PurgeAge < 0 || r.purgeAge() < 3*r.persistInterval():
		// A live instance rewrites its file every interval; a purge age
		// close to that would delete the files of slow, live instances.
		return fmt.Errorf("legacygate: rotation: purge_age: %s must be at least three times persist_interval (%s)", r.purgeAge(), r.persistInterval())
	}
	return nil
}

// loadKeys loads or generates the signing keys and refuses a next key equal
// to the current one.
func (a *App) loadKeys(ctx caddy.Context) error {
	for _, k := range a.SigningKeys {
		s, err := k.load(ctx, a.storage)
		if err != nil {
			return fmt.Errorf("legacygate: signing_key %s: %w", k.Role, err)
		}
		if k.Role == roleCurrent {
			a.current = s
		} else {
			a.next = s
		}
	}
	if a.next != nil && a.next.KeyID() == a.current.KeyID() {
		return fmt.Errorf("legacygate: signing_key next: same public key as signing_key current (key id %s); a rotation needs a new key", a.current.KeyID())
	}
	return nil
}

func (k SigningKeyConfig) load(ctx context.Context, storage certmagic.Storage) (*policyguard.Signer, error) {
	if k.Generate == "" {
		return policyguard.LoadSigner(k.KeyFile, k.CertFile)
	}
	sctx, cancel := context.WithTimeout(ctx, storageTimeout)
	defer cancel()
	return loadOrGenerateKey(sctx, storage, k.Generate)
}

// loadOrGenerateKey returns the key stored under name, making it first if
// it does not exist. The lock makes concurrent gateways agree on one key.
func loadOrGenerateKey(ctx context.Context, storage certmagic.Storage, name string) (*policyguard.Signer, error) {
	keyPath, certPath := path.Join("legacygate", "keys", name+".key"), path.Join("legacygate", "keys", name+".crt")
	if s, err := loadStoredKey(ctx, storage, keyPath, certPath); !errors.Is(err, fs.ErrNotExist) {
		return s, err
	}
	lock := path.Join("legacygate", "keys", name)
	if err := storage.Lock(ctx, lock); err != nil {
		return nil, fmt.Errorf("generate %s: locking storage: %w", name, err)
	}
	defer func() { _ = storage.Unlock(context.WithoutCancel(ctx), lock) }()
	if s, err := loadStoredKey(ctx, storage, keyPath, certPath); !errors.Is(err, fs.ErrNotExist) {
		return s, err
	}
	key, cert, err := policyguard.GenerateSigningKey(generatedKeyBits, "legacygate policy signing "+name)
	if err != nil {
		return nil, fmt.Errorf("generate %s: %w", name, err)
	}
	keyPEM, certPEM, err := policyguard.EncodeKeyPair(key, cert)
	if err != nil {
		return nil, fmt.Errorf("generate %s: %w", name, err)
	}
	// The certificate is written last: loadStoredKey treats a missing
	// certificate as "not generated yet".
	if err := storage.Store(ctx, keyPath, keyPEM); err != nil {
		return nil, fmt.Errorf("generate %s: storing %s: %w", name, keyPath, err)
	}
	if err := storage.Store(ctx, certPath, certPEM); err != nil {
		return nil, fmt.Errorf("generate %s: storing %s: %w", name, certPath, err)
	}
	return policyguard.NewSigner(key, cert)
}

func loadStoredKey(ctx context.Context, storage certmagic.Storage, keyPath, certPath string) (*policyguard.Signer, error) {
	certPEM, err := storage.Load(ctx, certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := storage.Load(ctx, keyPath)
	if err != nil {
		return nil, fmt.Errorf("storage holds %s but not %s: %w", certPath, keyPath, err)
	}
	certs, err := policyguard.ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("stored %s: %w", certPath, err)
	}
	key, err := policyguard.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("stored %s: %w", keyPath, err)
	}
	s, err := policyguard.NewSigner(key, certs[0])
	if err != nil {
		return nil, fmt.Errorf("stored %s and %s: %w", keyPath, certPath, err)
	}
	return s, nil
}

// Start runs the persistence loop and makes the app the one the admin API
// reports on.
func (a *App) Start() error {
	activeApp.Store(a)
	if a.table == nil {
		return nil
	}
	a.stop, a.done = make(chan struct{}), make(chan struct{})
	go a.persistLoop(a.Rotation.persistInterval())
	return nil
}

// Stop ends the persistence loop; Cleanup saves the last progress.
func (a *App) Stop() error {
	activeApp.CompareAndSwap(a, nil)
	if a.stop != nil {
		close(a.stop)
		<-a.done
		a.stop = nil
	}
	return nil
}

// Cleanup saves the progress one last time, so that a restart or a reload
// loses nothing since the last interval.
func (a *App) Cleanup() error {
	activeApp.CompareAndSwap(a, nil)
	if a.store == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
	defer cancel()
	if err := a.store.sync(ctx, a.table, a.now()); err != nil {
		a.logger.Error("saving rotation progress", zap.Error(err))
		return err
	}
	return nil
}

func (a *App) persistLoop(interval time.Duration) {
	defer close(a.done)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-tick.C:
			a.syncOnce()
		}
	}
}

// syncOnce saves this instance's progress after merging every instance's.
func (a *App) syncOnce() {
	ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
	defer cancel()
	if err := a.store.sync(ctx, a.table, a.now()); err != nil {
		a.logger.Error("syncing rotation progress with storage", zap.Error(err))
	}
	a.updateGauges()
}

// activeApp is the running app, for the admin API (admin modules are not
// provisioned with the configuration's apps).
var activeApp atomic.Pointer[App]

// The decisions handlers ask for.

// clientID resolves the client_id placeholder for r, ASCII upper-cased. A
// client_id that is one query parameter, the common case, is read with the
// one query parser, which reports a parameter given twice or malformed as
// an error: such a request has no client id.
func (a *App) clientID(r *http.Request) (string, error) {
	if a.queryKey != "" {
		id, _, err := query.Single(r.URL.RawQuery, a.queryKey)
		if err != nil {
			return "", fmt.Errorf("client_id: %w", err)
		}
		return query.Upper(id), nil
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return "", nil
	}
	return query.Upper(repl.ReplaceKnown(a.ClientID, "")), nil
}

// signerFor picks the key that signs the payload sent in answer to r, or
// reports that the payload is held: r's client fetched the next certificate
// and has not confirmed it, so no key is safe (see policyguard.KeyHold).
// A request whose client id is ambiguous gets no signer: the manager may
// have answered for another client than the one the gateway would sign
// for, so the payload is refused, never signed.
func (a *App) signerFor(r *http.Request) (signer *policyguard.Signer, hold bool) {
	id, err := a.clientID(r)
	if err != nil {
		return nil, false
	}
	return a.signerForClient(id, a.now())
}

func (a *App) signerForClient(id string, now time.Time) (signer *policyguard.Signer, hold bool) {
	if a.table == nil {
		return a.current, false
	}
	p := a.table.Policy()
	if id == "" && now.Before(p.Window.End.Add(p.Grace)) {
		return a.current, false
	}
	switch a.table.Decide(id, now) {
	case policyguard.KeyNext:
		return a.next, false
	case policyguard.KeyHold:
		return nil, true
	}
	return a.current, false
}

// holdRetryAfter is the Retry-After of a held payload.
func (a *App) holdRetryAfter() time.Duration {
	if a.Rotation == nil {
		return defaultHoldRetryAfter
	}
	return a.Rotation.holdRetryAfter()
}

// anchor is the signing certificate settings documents carry at now: the
// next one from the window's start on, the current one before it. next
// reports which.
func (a *App) anchor(now time.Time) (cert *x509.Certificate, next bool) {
	if a.table == nil || now.Before(a.Rotation.Window.Start) {
		return a.current.Cert(), false
	}
	return a.next.Cert(), true
}

// windowOpen reports whether the rotation window is open at now.
func (a *App) windowOpen(now time.Time) bool {
	return a.table != nil && a.table.Policy().Phase(now) == "open"
}

// anchorServed records that r's client was served settings carrying the
// next certificate.
func (a *App) anchorServed(r *http.Request) {
	if a.table == nil {
		return
	}
	if id, err := a.clientID(r); err == nil && id != "" {
		a.table.AnchorFetched(id, a.now())
	}
}

// heartbeatVar marks a request whose heartbeat was recorded, so that the
// plaintext_bridge and the policy_guard behind it count it once.
const heartbeatVar = "legacygate.heartbeat_recorded"

// observeHeartbeat records r as its client's heartbeat if it is one. A
// request naming a heartbeat parameter or the client id twice is none.
func (a *App) observeHeartbeat(r *http.Request, plaintext bool) {
	if a.table == nil {
		return
	}
	if ok, err := a.heartbeat.match(r); !ok || err != nil {
		return
	}
	if caddyhttp.GetVar(r.Context(), heartbeatVar) != nil {
		return
	}
	caddyhttp.SetVar(r.Context(), heartbeatVar, true)
	if id, err := a.clientID(r); err == nil && id != "" {
		a.table.Heartbeat(id, a.now(), plaintext)
	}
}

// decisionKeys are the query parameters the app decides on: the client id
// and the heartbeat's parameters.
func (a *App) decisionKeys() []string {
	keys := a.heartbeat.keys()
	if a.queryKey != "" {
		keys = append(keys, a.queryKey)
	}
	return keys
}

// requestMatcher is a RequestSpec ready to match.
type requestMatcher struct {
	path   string
	prefix bool
	query  []queryRule // sorted by key, so matching is deterministic
}

// queryRule is one parameter a RequestSpec requires.
type queryRule struct{ key, value string }

func newRequestMatcher(s RequestSpec) requestMatcher {
	p := strings.ToLower(s.Path)
	m := requestMatcher{path: strings.TrimSuffix(p, "*"), prefix: strings.HasSuffix(p, "*")}
	for k, v := range s.Query {
		m.query = append(m.query, queryRule{key: k, value: v})
	}
	slices.SortFunc(m.query, func(a, b queryRule) int { return strings.Compare(a.key, b.key) })
	return m
}

// match reports whether r is on the matcher's path and has each of its
// query parameters once, with its value (both ignoring ASCII case). An
// error (a parameter given twice, a malformed escape) is no match, and
// the caller refuses the request.
func (m requestMatcher) match(r *http.Request) (bool, error) {
	if m.path != "" || m.prefix {
		p := strings.ToLower(r.URL.Path)
		if m.prefix && !strings.HasPrefix(p, m.path) || !m.prefix && p != m.path {
			return false, nil
		}
	}
	for _, rule := range m.query {
		v, found, err := query.Single(r.URL.RawQuery, rule.key)
		if err != nil {
			return false, err
		}
		if !found || !query.EqualFold(v, rule.value) {
			return false, nil
		}
	}
	return true, nil
}

// keys are the query parameters the matcher looks at.
func (m requestMatcher) keys() []string {
	keys := make([]string, len(m.query))
	for i, rule := range m.query {
		keys[i] = rule.key
	}
	return keys
}

// Refusal reasons of the handlers that judge query parameters, in their
// logs and metrics.
const (
	// refusalDuplicateKey: a parameter (or header) a decision is taken on
	// is given more than once; the manager might read another value than
	// the one judged.
	refusalDuplicateKey = "duplicate_key"
	// refusalBadQuery: a malformed escape, or a parameter name another
	// reader may take for one decided on (see query.ErrAmbiguousKey).
	refusalBadQuery = "bad_query"
)

// queryRefusalReason is the refusal reason for an error of the query
// package.
func queryRefusalReason(err error) string {
	if errors.Is(err, query.ErrDuplicate) {
		return refusalDuplicateKey
	}
	return refusalBadQuery
}

// keyRefusalText is what a client refused for its query learns.
var keyRefusalText = map[string]string{
	refusalDuplicateKey: "a query parameter is given more than once",
	refusalBadQuery:     "malformed query",
}

// writeBadRequest answers 400 with a one-line body for a query refusal.
func writeBadRequest(w http.ResponseWriter, reason string) error {
	body := "400 Bad Request: " + keyRefusalText[reason] + "\n"
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusBadRequest)
	_, err := io.WriteString(w, body)
	return err
}

// rotationGauges are the operator's figures on Caddy's metrics registry;
// never labelled by client.
type rotationGauges struct {
	clients   *prometheus.GaugeVec
	plaintext prometheus.Gauge
	ratio     prometheus.Gauge
}

var rotationMetrics = rotationGauges{
	clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "legacygate_rotation_clients",
		Help: "Clients tracked by the key rotation, by state (unseen, pending, anchor_fetched, confirmed).",
	}, []string{"state"}),
	plaintext: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "legacygate_rotation_plaintext_clients",
		Help: "Tracked clients whose latest heartbeat came over plain HTTP.",
	}),
	ratio: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "legacygate_rotation_confirmed_ratio",
		Help: "Confirmed clients divided by tracked clients (0 when none is tracked).",
	}),
}

func registerRotationGauges(reg prometheus.Registerer) (rotationGauges, error) {
	var g rotationGauges
	var err error
	if g.clients, err = registerCollector(reg, rotationMetrics.clients); err != nil {
		return g, err
	}
	if g.plaintext, err = registerCollector(reg, rotationMetrics.plaintext); err != nil {
		return g, err
	}
	g.ratio, err = registerCollector(reg, rotationMetrics.ratio)
	return g, err
}

// updateGauges sets the gauges from the table (zero without a rotation).
func (a *App) updateGauges() {
	var c policyguard.RotationCounts
	if a.table != nil {
		c = a.table.Counts(a.now())
	}
	a.gauges.clients.WithLabelValues(string(policyguard.ProgressUnseen)).Set(float64(c.Unseen))
	a.gauges.clients.WithLabelValues(string(policyguard.ProgressPending)).Set(float64(c.Pending))
	a.gauges.clients.WithLabelValues(string(policyguard.ProgressAnchorFetched)).Set(float64(c.AnchorFetched))
	a.gauges.clients.WithLabelValues(string(policyguard.ProgressConfirmed)).Set(float64(c.Confirmed))
	a.gauges.plaintext.Set(float64(c.Plaintext))
	a.gauges.ratio.Set(confirmedRatio(c))
}

func confirmedRatio(c policyguard.RotationCounts) float64 {
	if c.Tracked == 0 {
		return 0
	}
	return float64(c.Confirmed) / float64(c.Tracked)
}

func parseAppOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("legacygate: the global option is given twice")
	}
	a := new(App)
	if err := a.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "legacygate", Value: caddyconfig.JSON(a, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the global option. Syntax:
//
//	legacygate {
//	    signing_key current <key_file> <cert_file> | generate [<name>]
//	    signing_key next    <key_file> <cert_file> | generate [<name>]
//	    client_id   <placeholder>
//	    heartbeat   [<path>] [<param>=<value>...]
//	    instance_id <name>
//	    storage     <module> [<args...>]
//	    rotation {
//	        window             <start> <end>
//	        confirm_heartbeats <n>
//	        grace              <duration>
//	        max_clients        <n>
//	        persist_interval   <duration>
//	        purge_age          <duration>
//	        hold_retry_after   <duration>
//	    }
//	}
//
// Times are RFC 3339 (2026-12-01T00:00:00Z); durations take Go units plus d
// for days (90d). client_id takes Caddyfile shorthands ({query.hostid});
// the id is ASCII upper-cased, and a request naming its query parameter
// twice has no id (see the ClientID field). heartbeat's parameter names and
// values match ignoring ASCII case.
// generate keeps the key in Caddy storage under the name (default: the role).
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "signing_key":
			err = a.unmarshalSigningKey(d)
		case "client_id":
			a.ClientID, err = oneArg(d)
			a.ClientID = expandShorthands(a.ClientID)
		case "heartbeat":
			a.Heartbeat, err = unmarshalRequestSpec(d)
		case "instance_id":
			a.InstanceID, err = oneArg(d)
		case "storage":
			err = a.unmarshalStorage(d)
		case "rotation":
			if a.Rotation != nil {
				return d.Err("legacygate: rotation: given twice; one rotation at a time")
			}
			a.Rotation = new(RotationConfig)
			err = a.Rotation.unmarshalCaddyfile(d)
		default:
			return d.Errf("legacygate: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (a *App) unmarshalSigningKey(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 2 || len(args) > 3 {
		return d.Err("legacygate: signing_key: want <current|next> <key_file> <cert_file>, or <current|next> generate [<name>]")
	}
	k := SigningKeyConfig{Role: args[0]}
	switch {
	case args[1] == "generate" && len(args) == 3:
		k.Generate = args[2]
	case args[1] == "generate":
		k.Generate = args[0]
	case len(args) == 3:
		k.KeyFile, k.CertFile = args[1], args[2]
	default:
		return d.Errf("legacygate: signing_key %s: want <key_file> <cert_file>, or generate [<name>]", args[0])
	}
	a.SigningKeys = append(a.SigningKeys, k)
	return nil
}

func (a *App) unmarshalStorage(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	name := d.Val()
	mod, err := caddyfile.UnmarshalModule(d, "caddy.storage."+name)
	if err != nil {
		return err
	}
	conv, ok := mod.(caddy.StorageConverter)
	if !ok {
		return d.Errf("legacygate: storage: module %q is not a storage", name)
	}
	a.StorageRaw = caddyconfig.JSONModuleObject(conv, "module", name, nil)
	return nil
}

func (r *RotationConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	windows := 0
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		field := d.Val()
		var err error
		switch field {
		case "window":
			windows++
			if windows > 1 {
				return d.Err("legacygate: rotation: window: given twice (overlapping windows); one window per rotation")
			}
			err = r.unmarshalWindow(d)
		case "confirm_heartbeats":
			r.ConfirmHeartbeats, err = intArg(d, 1)
		case "max_clients":
			r.MaxClients, err = intArg(d, 1)
		case "grace":
			err = durationArg(d, &r.Grace)
		case "persist_interval":
			err = durationArg(d, &r.PersistInterval)
		case "purge_age":
			err = durationArg(d, &r.PurgeAge)
		case "hold_retry_after":
			err = durationArg(d, &r.HoldRetryAfter)
		default:
			return d.Errf("legacygate: rotation: unknown subdirective %q", field)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *RotationConfig) unmarshalWindow(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return d.Err("legacygate: rotation: window: want <start> <end> (RFC 3339 times)")
	}
	var times [2]time.Time
	for i, v := range args {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return d.Errf("legacygate: rotation: window: %q is not an RFC 3339 time such as 2026-12-01T00:00:00Z", v)
		}
		times[i] = t.UTC()
	}
	r.Window = policyguard.Window{Start: times[0], End: times[1]}
	return nil
}

// unmarshalRequestSpec reads [<path>] [<param>=<value>...].
func unmarshalRequestSpec(d *caddyfile.Dispenser) (*RequestSpec, error) {
	field := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.Errf("%s: want [<path>] [<param>=<value>...]", field)
	}
	s := &RequestSpec{}
	for i, arg := range args {
		if i == 0 && strings.HasPrefix(arg, "/") {
			s.Path = arg
			continue
		}
		k, v, ok := strings.Cut(arg, "=")
		if !ok || k == "" {
			return nil, d.Errf("%s: %q is neither a path (first, starting with /) nor <param>=<value>", field, arg)
		}
		if s.Query == nil {
			s.Query = map[string]string{}
		}
		s.Query[k] = v
	}
	return s, nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	field := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return "", d.Errf("%s: want exactly one value", field)
	}
	return args[0], nil
}

func intArg(d *caddyfile.Dispenser, least int) (int, error) {
	field := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < least {
		return 0, d.Errf("legacygate: rotation: %s: %q is not a whole number of at least %d", field, v, least)
	}
	return n, nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	field := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		return d.Errf("legacygate: rotation: %s: %q is not a positive duration (units ns to h, or d for days: 90d)", field, v)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// expandShorthands turns Caddyfile placeholder shorthands ({query.hostid})
// into full placeholders, which the Caddyfile adapter does for site blocks
// but not for global options.
func expandShorthands(s string) string {
	seg := caddyfile.Segment{caddyfile.Token{Text: s}}
	httpcaddyfile.NewShorthandReplacer().ApplyToSegment(&seg)
	return seg[0].Text
}

// Interface guards.
var (
	_ caddy.App             = (*App)(nil)
	_ caddy.Provisioner     = (*App)(nil)
	_ caddy.Validator       = (*App)(nil)
	_ caddy.CleanerUpper    = (*App)(nil)
	_ caddyfile.Unmarshaler = (*App)(nil)
)
