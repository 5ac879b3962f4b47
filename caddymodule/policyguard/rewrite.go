package policyguard

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
	"github.com/legacygate/legacygate/caddymodule/rotation"
	guardlib "github.com/legacygate/legacygate/policyguard"
	"github.com/legacygate/legacygate/rewrite"
)

// GuardRewrite is policy_guard's rewrite block: the settings rewrite that
// runs between verification and signing, on the settings documents among
// the signed roots. The rules are those of the rewrite package (names
// default to the SyLink server list); the certificate embedded is the
// gateway's signing certificate the client should trust next, so it is not
// configured here.
type GuardRewrite struct {
	// Roots are the signed roots (each also in policy_guard's roots) that
	// are settings documents. Default: ServerSettings.
	Roots []string `json:"roots,omitempty"`

	// IndexSerial is where the settings serial is in the (unsigned) index
	// document, rewritten so that clients refetch settings when the
	// rewrite changes. Nil: SEPM's Index SyLink Serial.
	IndexSerial *IndexSerial `json:"index_serial,omitempty"`

	rewrite.Rules
}

const defaultRewriteRoot = "ServerSettings"

// validate names the wrong field; signedRoots are policy_guard's roots.
func (rw *GuardRewrite) validate(signedRoots []string) error {
	if len(rw.Certificate) > 0 {
		return errors.New("policy_guard: rewrite: certificate: the embedded certificate is the gateway's signing certificate; it is not configured")
	}
	for _, root := range rw.roots() {
		if !containsString(signedRoots, root) {
			return fmt.Errorf("policy_guard: rewrite: roots: %q is not among policy_guard's roots %v", root, signedRoots)
		}
	}
	if err := rw.IndexSerial.validate(signedRoots); err != nil {
		return err
	}
	if err := rw.Rules.Validate(); err != nil {
		return fmt.Errorf("policy_guard: rewrite: %w", err)
	}
	return nil
}

func (rw *GuardRewrite) roots() []string {
	if len(rw.Roots) == 0 {
		return []string{defaultRewriteRoot}
	}
	return rw.Roots
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// guardSigning decides, per request, which key signs a payload and whether
// the settings rewrite applies: with a signing_key of its own, policy_guard
// signs with it and embeds its certificate; without, the legacygate app
// picks the key per client and the certificate by the window.
type guardSigning struct {
	app *rotation.App    // nil: no legacygate app
	own *guardlib.Signer // nil: keys come from the app

	rewriteRoots []string
	// transforms by embedded certificate: own (or the app's current), and
	// the app's next.
	current, next *rewrite.Transform
	// keepCurrent and keepNext are the same without drop_http_only, for the
	// clients plaintext_bridge keeps on plain HTTP (nil: no drop_http_only,
	// or no legacygate app).
	keepCurrent, keepNext *rewrite.Transform
}

// newGuardSigning loads policy_guard's own key, if it has one, and prepares
// the rewrite for each certificate it may embed.
func newGuardSigning(keyFile, certFile string, rw *GuardRewrite, app *rotation.App) (*guardSigning, error) {
	s := &guardSigning{app: app}
	if keyFile != "" {
		own, err := guardlib.LoadSigner(keyFile, certFile)
		if err != nil {
			return nil, fmt.Errorf("policy_guard: signing_key: %w", err)
		}
		s.own = own
	} else if app == nil {
		return nil, errors.New("policy_guard: signing_key: not set, and there is no legacygate global option to take the keys from")
	}
	if rw == nil {
		return s, nil
	}
	s.rewriteRoots = rw.roots()
	var err error
	if s.current, s.next, err = s.transforms(rw.Rules); err != nil {
		return nil, err
	}
	if rw.DropHTTPOnly && app != nil {
		keep := rw.Rules
		keep.DropHTTPOnly = false
		if s.keepCurrent, s.keepNext, err = s.transforms(keep); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// transforms prepares rules for each certificate the rewrite may embed:
// the own key's (or the app's current), and the app's next.
func (s *guardSigning) transforms(rules rewrite.Rules) (current, next *rewrite.Transform, err error) {
	if s.own != nil {
		current, err = newRewriteFor(rules, s.own)
		return current, nil, err
	}
	cur, nxt := s.app.Signers()
	if current, err = newRewriteFor(rules, cur); err != nil {
		return nil, nil, err
	}
	if nxt != nil {
		if next, err = newRewriteFor(rules, nxt); err != nil {
			return nil, nil, err
		}
	}
	return current, next, nil
}

func newRewriteFor(rules rewrite.Rules, s *guardlib.Signer) (*rewrite.Transform, error) {
	rules.Certificate = s.Cert().Raw
	t, err := rewrite.NewTransform(rules)
	if err != nil {
		return nil, fmt.Errorf("policy_guard: rewrite: %w", err)
	}
	return t, nil
}

// guardChoice is what signs one payload, or that it is held.
type guardChoice struct {
	signer *guardlib.Signer
	// hold: the client fetched the next certificate and has not confirmed
	// it, so no key is safe; the payload is answered 503 with Retry-After.
	hold      bool
	transform guardlib.Transform // nil: no rewrite
	// anchorNext: the rewrite embeds the next certificate; serving it
	// records the client's anchor fetch.
	anchorNext bool
}

// choose picks the key and the rewrite for the payload doc sent to r.
func (s *guardSigning) choose(r *http.Request, doc []byte) guardChoice {
	var c guardChoice
	if s.own != nil {
		c.signer = s.own
	} else if c.signer, c.hold = s.app.SignerFor(r); c.hold {
		return c
	}
	if s.current == nil || !s.isSettings(doc) {
		return c
	}
	t, next := s.settingsTransformFor(s.keepCurrent != nil && s.app.Kept(r))
	c.transform, c.anchorNext = t, next
	return c
}

// settingsTransform is the rewrite a settings document gets now, and
// whether it embeds the app's next certificate. Only with a rewrite.
func (s *guardSigning) settingsTransform() (t *rewrite.Transform, next bool) {
	return s.settingsTransformFor(false)
}

// settingsTransformFor is settingsTransform for a client that is kept on
// plain HTTP or not (kept is true only with keep transforms): a kept client
// keeps its plain-HTTP server entries, since its agent cannot follow a
// move to HTTPS.
func (s *guardSigning) settingsTransformFor(kept bool) (t *rewrite.Transform, next bool) {
	current, nextT := s.current, s.next
	if kept {
		current, nextT = s.keepCurrent, s.keepNext
	}
	if s.own == nil && nextT != nil {
		if _, next := s.app.Anchor(s.app.Now()); next {
			return nextT, true
		}
	}
	return current, false
}

func (s *guardSigning) isSettings(doc []byte) bool {
	root, err := documentRoot(doc)
	return err == nil && root != nil && containsString(s.rewriteRoots, string(root))
}

// retryAfter is how long a held client is asked to wait.
func (s *guardSigning) retryAfter() time.Duration {
	if s.app == nil {
		return rotation.DefaultHoldRetryAfter
	}
	return s.app.HoldRetryAfter()
}

// served is called once the payload chosen by c was signed for r.
func (s *guardSigning) served(r *http.Request, c guardChoice) {
	if c.anchorNext {
		s.app.AnchorServed(r)
	}
}

// observe reports r to the app if it is a heartbeat.
func (s *guardSigning) observe(r *http.Request) {
	if s.app != nil {
		s.app.ObserveHeartbeat(r, false)
	}
}

// unmarshalGuardRewrite reads policy_guard's rewrite block:
//
//	rewrite {
//	    roots                <element>...
//	    addresses            <host>...
//	    https_port           <port>
//	    http_port            <port>
//	    drop_http_only
//	    server_element       <name or path>
//	    address_attr         <name>
//	    https_port_attr      <name>
//	    http_port_attr       <name>
//	    protocol_attr        <name> <https_value> <http_value>
//	    certificate_element  <name or path>
//	    index_serial         off | <root> <element> <attribute>
//	}
//
// index_serial defaults to Index SyLink Serial (see IndexSerial).
func unmarshalGuardRewrite(d *caddyfile.Dispenser) (*GuardRewrite, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	rw := &GuardRewrite{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		field := d.Val()
		var err error
		switch field {
		case "roots":
			rw.Roots, err = caddyarg.Append(d, rw.Roots)
		case "addresses":
			rw.Addresses, err = caddyarg.Append(d, rw.Addresses)
		case "https_port":
			rw.HTTPSPort, err = caddyarg.Port(d)
		case "http_port":
			rw.HTTPPort, err = caddyarg.Port(d)
		case "drop_http_only":
			rw.DropHTTPOnly, err = true, caddyarg.None(d)
		case "server_element":
			rw.ServerElement, err = caddyarg.One(d)
		case "address_attr":
			rw.AddressAttr, err = caddyarg.One(d)
		case "https_port_attr":
			rw.HTTPSPortAttr, err = caddyarg.One(d)
		case "http_port_attr":
			rw.HTTPPortAttr, err = caddyarg.One(d)
		case "certificate_element":
			rw.CertificateElement, err = caddyarg.One(d)
		case "index_serial":
			rw.IndexSerial, err = unmarshalIndexSerial(d)
		case "protocol_attr":
			args := d.RemainingArgs()
			if len(args) != 3 {
				return nil, d.Err("policy_guard: rewrite: protocol_attr: want <name> <https_value> <http_value>")
			}
			rw.ProtocolAttr, rw.ProtocolHTTPSValue, rw.ProtocolHTTPValue = args[0], args[1], args[2]
		default:
			return nil, d.Errf("policy_guard: rewrite: unknown subdirective %q", field)
		}
		if err != nil {
			return nil, err
		}
	}
	return rw, nil
}
