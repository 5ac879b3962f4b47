package rotation

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/internal/rotationtable"
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
	maxHoldRetryAfter      = time.Hour
	defaultHeartbeatPath   = "/secars/secars.dll"
	generatedKeyBits       = 2048
)

// DefaultHoldRetryAfter is the Retry-After of a held payload when no
// rotation says otherwise.
const DefaultHoldRetryAfter = 60 * time.Second

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
	table         *rotationtable.RotationTable
	store         *rotationStore
	logger        *zap.Logger
	now           func() time.Time
	gauges        rotationGauges
	keep          *keepLists  // set by Provision; plaintext_bridge adds to it
	generated     []storedKey // generated keys, written again if storage loses them

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
	Window rotationtable.Window `json:"window"`
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
// from storage and registers the gauges. Caddy calls Validate after it.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.keep = new(keepLists)
	if a.now == nil {
		a.now = time.Now
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
	if err := r.validate(); err != nil { // before anything is built from it
		return err
	}
	table, err := rotationtable.NewRotationTable(rotationtable.RotationPolicy{
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

// validateInstanceID checks the instance id, which becomes a storage key.
func (a *App) validateInstanceID() error {
	if a.InstanceID != "" && !namePattern.MatchString(a.InstanceID) {
		return fmt.Errorf("legacygate: instance_id: %q is not a name of letters, digits, '.', '_' or '-' (at most 64)", a.InstanceID)
	}
	return nil
}

func (a *App) instanceID() (string, error) {
	if a.InstanceID != "" {
		return a.InstanceID, a.validateInstanceID()
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
		return DefaultHoldRetryAfter
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
	if err := a.validateKeys(); err != nil {
		return err
	}
	if err := a.validateInstanceID(); err != nil {
		return err
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

// validateKeys checks every signing key and that the roles fit the
// rotation. Provision needs it too: the keys it loads are chosen by role,
// and a generated key's name becomes a storage key.
func (a *App) validateKeys() error {
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
	if err := a.validateKeys(); err != nil {
		return err
	}
	for _, k := range a.SigningKeys {
		s, stored, err := k.load(ctx, a.storage)
		if err != nil {
			return fmt.Errorf("legacygate: signing_key %s: %w", k.Role, err)
		}
		if k.Generate != "" {
			a.generated = append(a.generated, stored)
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

func (k SigningKeyConfig) load(ctx context.Context, storage certmagic.Storage) (*policyguard.Signer, storedKey, error) {
	if k.Generate == "" {
		s, err := policyguard.LoadSigner(k.KeyFile, k.CertFile)
		return s, storedKey{}, err
	}
	sctx, cancel := context.WithTimeout(ctx, storageTimeout)
	defer cancel()
	return loadOrGenerateKey(sctx, storage, k.Generate)
}

// storedKey is a generated key as kept in storage.
type storedKey struct {
	name            string
	keyPEM, certPEM []byte
}

func generatedKeyPaths(name string) (keyPath, certPath, lock string) {
	return path.Join("legacygate", "keys", name+".key"), path.Join("legacygate", "keys", name+".crt"), path.Join("legacygate", "keys", name)
}

// loadOrGenerateKey returns the key stored under name, making it first if
// it does not exist. The lock makes concurrent gateways agree on one key.
func loadOrGenerateKey(ctx context.Context, storage certmagic.Storage, name string) (*policyguard.Signer, storedKey, error) {
	_, _, lock := generatedKeyPaths(name)
	if s, sk, err := loadStoredKey(ctx, storage, name); !errors.Is(err, fs.ErrNotExist) {
		return s, sk, err
	}
	if err := storage.Lock(ctx, lock); err != nil {
		return nil, storedKey{}, fmt.Errorf("generate %s: locking storage: %w", name, err)
	}
	defer func() { _ = storage.Unlock(context.WithoutCancel(ctx), lock) }()
	if s, sk, err := loadStoredKey(ctx, storage, name); !errors.Is(err, fs.ErrNotExist) {
		return s, sk, err
	}
	key, cert, err := policyguard.GenerateSigningKey(generatedKeyBits, "legacygate policy signing "+name)
	if err != nil {
		return nil, storedKey{}, fmt.Errorf("generate %s: %w", name, err)
	}
	keyPEM, certPEM, err := policyguard.EncodeKeyPair(key, cert)
	if err != nil {
		return nil, storedKey{}, fmt.Errorf("generate %s: %w", name, err)
	}
	sk := storedKey{name: name, keyPEM: keyPEM, certPEM: certPEM}
	if err := storeKey(ctx, storage, sk); err != nil {
		return nil, storedKey{}, fmt.Errorf("generate %s: %w", name, err)
	}
	s, err := policyguard.NewSigner(key, cert)
	return s, sk, err
}

// storeKey writes the certificate last: loadStoredKey treats a missing
// certificate as "not generated yet".
func storeKey(ctx context.Context, storage certmagic.Storage, sk storedKey) error {
	keyPath, certPath, _ := generatedKeyPaths(sk.name)
	if err := storage.Store(ctx, keyPath, sk.keyPEM); err != nil {
		return fmt.Errorf("storing %s: %w", keyPath, err)
	}
	if err := storage.Store(ctx, certPath, sk.certPEM); err != nil {
		return fmt.Errorf("storing %s: %w", certPath, err)
	}
	return nil
}

// restoreGeneratedKeys writes the generated keys again if storage lost
// them (a Redis restarted without persistence): a gateway started later
// must find the key the cluster signs with, not generate another. A
// different key found in their place is only logged: the operator must
// choose.
func (a *App) restoreGeneratedKeys(ctx context.Context) {
	for _, sk := range a.generated {
		_, certPath, lock := generatedKeyPaths(sk.name)
		if a.storage.Exists(ctx, certPath) {
			continue
		}
		if err := a.storage.Lock(ctx, lock); err != nil {
			a.logger.Error("restoring a generated signing key to storage", zap.String("name", sk.name), zap.Error(err))
			continue
		}
		_, found, err := loadStoredKey(ctx, a.storage, sk.name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := storeKey(ctx, a.storage, sk); err != nil {
				a.logger.Error("restoring a generated signing key to storage", zap.String("name", sk.name), zap.Error(err))
			} else {
				a.logger.Warn("storage had lost a generated signing key; wrote it again", zap.String("name", sk.name))
			}
		case err == nil && !bytes.Equal(found.certPEM, sk.certPEM):
			a.logger.Error("storage holds another key under a generated signing key's name than this gateway signs with",
				zap.String("name", sk.name), zap.String("path", certPath))
		}
		_ = a.storage.Unlock(context.WithoutCancel(ctx), lock)
	}
}

func loadStoredKey(ctx context.Context, storage certmagic.Storage, name string) (*policyguard.Signer, storedKey, error) {
	keyPath, certPath, _ := generatedKeyPaths(name)
	certPEM, err := storage.Load(ctx, certPath)
	if err != nil {
		return nil, storedKey{}, err
	}
	keyPEM, err := storage.Load(ctx, keyPath)
	if err != nil {
		return nil, storedKey{}, fmt.Errorf("storage holds %s but not %s: %w", certPath, keyPath, err)
	}
	certs, err := policyguard.ParseCertificates(certPEM)
	if err != nil {
		return nil, storedKey{}, fmt.Errorf("stored %s: %w", certPath, err)
	}
	key, err := policyguard.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, storedKey{}, fmt.Errorf("stored %s: %w", keyPath, err)
	}
	s, err := policyguard.NewSigner(key, certs[0])
	if err != nil {
		return nil, storedKey{}, fmt.Errorf("stored %s and %s: %w", keyPath, certPath, err)
	}
	return s, storedKey{name: name, keyPEM: keyPEM, certPEM: certPEM}, nil
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
	a.restoreGeneratedKeys(ctx)
	a.updateGauges()
}

// activeApp is the running app, for the admin API (admin modules are not
// provisioned with the configuration's apps).
var activeApp atomic.Pointer[App]

// The decisions handlers ask for.

// Signers are the current signing key and the next one (nil without a
// rotation), for handlers that prepare a rewrite per key.
func (a *App) Signers() (current, next *policyguard.Signer) { return a.current, a.next }

// Now is the app's clock.
func (a *App) Now() time.Time { return a.now() }

// SetClock replaces the app's clock; call it before Provision. Tests and
// simulations use it to move through a rotation window.
func (a *App) SetClock(now func() time.Time) { a.now = now }

// Progress is a client's progress through the rotation, false when it is
// not tracked (or there is no rotation).
func (a *App) Progress(clientID string) (rotationtable.ClientState, bool) {
	if a.table == nil {
		return rotationtable.ClientState{}, false
	}
	return a.table.Lookup(clientID)
}

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

// SignerFor picks the key that signs the payload sent in answer to r, or
// reports that the payload is held: r's client fetched the next certificate
// and has not confirmed it, so no key is safe (see rotationtable.KeyHold).
// A request whose client id is ambiguous gets no signer: the manager may
// have answered for another client than the one the gateway would sign
// for, so the payload is refused, never signed.
func (a *App) SignerFor(r *http.Request) (signer *policyguard.Signer, hold bool) {
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
	case rotationtable.KeyNext:
		return a.next, false
	case rotationtable.KeyHold:
		return nil, true
	}
	return a.current, false
}

// HoldRetryAfter is the Retry-After of a held payload.
func (a *App) HoldRetryAfter() time.Duration {
	if a.Rotation == nil {
		return DefaultHoldRetryAfter
	}
	return a.Rotation.holdRetryAfter()
}

// Anchor is the signing certificate settings documents carry at now: the
// next one from the window's start on, the current one before it. next
// reports which.
func (a *App) Anchor(now time.Time) (cert *x509.Certificate, next bool) {
	if a.table == nil || now.Before(a.Rotation.Window.Start) {
		return a.current.Cert(), false
	}
	return a.next.Cert(), true
}

// windowOpen reports whether the rotation window is open at now.
func (a *App) windowOpen(now time.Time) bool {
	return a.table != nil && a.table.Policy().Phase(now) == "open"
}

// AnchorServed records that r's client was served settings carrying the
// next certificate.
func (a *App) AnchorServed(r *http.Request) {
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

// ObserveHeartbeat records r as its client's heartbeat if it is one. A
// request naming a heartbeat parameter or the client id twice is none.
func (a *App) ObserveHeartbeat(r *http.Request, plaintext bool) {
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

// Interface guards.
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
