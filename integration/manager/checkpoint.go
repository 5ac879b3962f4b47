package manager

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/legacygate/legacygate/integration/certs"
)

// Check Point-style endpoint names, as counted by Manager.Requests.
const (
	CountCPHeartbeat = "heartbeat"         // POST /epm/heartbeat
	CountCPPolicy    = "policy"            // GET /epm/policy/{blade}
	CountCPPackage   = "package"           // GET /epm/packages/{name}
	CountCPSignature = "package_signature" // GET /epm/packages/{name}.p7s
)

// Client protocol paths of a Check Point-style manager (ours: the real ones
// are not public).
const (
	CPHeartbeatPath = "/epm/heartbeat"
	CPPolicyPrefix  = "/epm/policy/"
	CPPackagePrefix = "/epm/packages/"
	// CPEndpointHeader carries the endpoint's id on every heartbeat.
	CPEndpointHeader = "X-Endpoint-Id"
	// CPSignatureSuffix names a package's detached CMS signature.
	CPSignatureSuffix = ".p7s"
)

// CPBlades are the policy blades the manager serves.
var CPBlades = []string{"firewall", "antimalware", "compliance", "disk_encryption"}

// CPPackages are the client packages the manager serves.
var CPPackages = []string{"EPS.msi", "EPS_upgrade.exe"}

const maxEndpointIDLen = 128

// CPHeartbeat is the answer to a heartbeat.
type CPHeartbeat struct {
	// Interval is the heartbeat interval in seconds (60 by default, as a
	// Check Point server).
	Interval int `json:"heartbeat_interval"`
	// PolicyVersion changes whenever the policies are published again (at
	// start and on every key change).
	PolicyVersion string `json:"policy_version"`
}

// checkpoint is the Check Point-style flavor.
type checkpoint struct {
	m      *Manager
	aesKey []byte // encrypts the policy blobs; the clients' copy is out of band
	docs   atomic.Pointer[cpDocs]
}

// cpDocs are what every client gets, built once per key.
type cpDocs struct {
	version    string
	policies   map[string][]byte
	packages   map[string][]byte
	signatures map[string][]byte
}

func newCheckpoint(m *Manager) flavor {
	key := make([]byte, 32)
	rand.Read(key)
	return &checkpoint{m: m, aesKey: key}
}

func (c *checkpoint) endpoints() []string {
	return []string{CountCPHeartbeat, CountCPPolicy, CountCPPackage, CountCPSignature, CountNotFound}
}

func (c *checkpoint) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(CPHeartbeatPath, c.heartbeat)
	mux.HandleFunc(CPPolicyPrefix, c.policy)
	mux.HandleFunc(CPPackagePrefix, c.pkg)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.m.count(CountNotFound)
		http.NotFound(w, r)
	})
	return mux
}

func (c *checkpoint) status() map[string]string {
	d := c.docs.Load()
	if d == nil {
		return map[string]string{}
	}
	return map[string]string{"policy_version": d.version}
}

// rebuild encrypts the policies again and signs the packages with id's key.
func (c *checkpoint) rebuild(id *identity) error {
	version := strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + randomHex(2)
	d := &cpDocs{
		version:    version,
		policies:   make(map[string][]byte, len(CPBlades)),
		packages:   make(map[string][]byte, len(CPPackages)),
		signatures: make(map[string][]byte, len(CPPackages)),
	}
	for _, blade := range CPBlades {
		blob, err := c.encrypt(fmt.Appendf(nil, "blade=%s version=%s\n%s", blade, version, randomHex(512)))
		if err != nil {
			return fmt.Errorf("policy %s: %w", blade, err)
		}
		d.policies[blade] = blob
	}
	size := max(c.m.cfg.ProfileSize, 4<<10)
	for _, name := range CPPackages {
		content := make([]byte, size)
		rand.Read(content)
		p7s, err := signDetached(content, id.pair, c.m.cfg.Sign)
		if err != nil {
			return fmt.Errorf("package %s: %w", name, err)
		}
		d.packages[name], d.signatures[name] = content, p7s
	}
	c.docs.Store(d)
	return nil
}

// encrypt seals plain with AES-256-GCM under the manager's key: the nonce,
// then the ciphertext and tag.
func (c *checkpoint) encrypt(plain []byte) ([]byte, error) {
	block, err := aes.NewCipher(c.aesKey)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize())
	rand.Read(nonce)
	return gcm.Seal(nonce, nonce, plain, nil), nil
}

// signDetached returns a CMS (PKCS#7) detached signature over content by
// pair's key, with its certificate included; the digest is SHA-1 for
// SignRSASHA1, SHA-256 otherwise.
func signDetached(content []byte, pair *certs.Pair, method string) ([]byte, error) {
	sd, err := pkcs7.NewSignedData(content)
	if err != nil {
		return nil, fmt.Errorf("CMS: %w", err)
	}
	if method == SignRSASHA1 {
		sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA1)
	} else {
		sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256)
	}
	if err := sd.AddSigner(pair.Cert, pair.Key, pkcs7.SignerInfoConfig{}); err != nil {
		return nil, fmt.Errorf("CMS signer: %w", err)
	}
	sd.Detach()
	return sd.Finish()
}

func (c *checkpoint) bad(w http.ResponseWriter, msg string) {
	c.m.count(CountBad)
	http.Error(w, msg, http.StatusBadRequest)
}

// heartbeat answers POST /epm/heartbeat from an endpoint that names itself
// in X-Endpoint-Id; the body (status, logs) is read and discarded.
func (c *checkpoint) heartbeat(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		c.bad(w, "heartbeat: use POST")
		return
	}
	id := r.Header.Get(CPEndpointHeader)
	if !validEndpointID(id) {
		c.bad(w, "heartbeat: missing or malformed "+CPEndpointHeader)
		return
	}
	_, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, c.m.cfg.MaxLogBytes))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		http.Error(w, fmt.Sprintf("heartbeat body exceeds %d bytes", c.m.cfg.MaxLogBytes), http.StatusRequestEntityTooLarge)
		return
	}
	if err != nil {
		c.bad(w, "heartbeat: reading body failed")
		return
	}
	c.m.count(CountCPHeartbeat)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(CPHeartbeat{Interval: c.m.cfg.HeartbeatSeconds, PolicyVersion: c.docs.Load().version})
}

// validEndpointID accepts 1-128 printable ASCII characters without spaces.
func validEndpointID(id string) bool {
	if id == "" || len(id) > maxEndpointIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// policy serves GET /epm/policy/{blade}: an opaque encrypted blob.
func (c *checkpoint) policy(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		c.bad(w, "policy: use GET")
		return
	}
	blob, ok := c.docs.Load().policies[strings.TrimPrefix(r.URL.Path, CPPolicyPrefix)]
	if !ok {
		c.m.count(CountNotFound)
		http.NotFound(w, r)
		return
	}
	c.m.count(CountCPPolicy)
	writeBinary(w, "application/octet-stream", blob)
}

// pkg serves GET /epm/packages/{name} and its signature {name}.p7s.
func (c *checkpoint) pkg(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		c.bad(w, "package: use GET")
		return
	}
	d := c.docs.Load()
	name := strings.TrimPrefix(r.URL.Path, CPPackagePrefix)
	if base, ok := strings.CutSuffix(name, CPSignatureSuffix); ok {
		if sig, ok := d.signatures[base]; ok {
			c.m.count(CountCPSignature)
			writeBinary(w, "application/pkcs7-signature", sig)
			return
		}
	} else if content, ok := d.packages[name]; ok {
		c.m.count(CountCPPackage)
		writeBinary(w, "application/octet-stream", content)
		return
	}
	c.m.count(CountNotFound)
	http.NotFound(w, r)
}

func writeBinary(w http.ResponseWriter, contentType string, b []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}
