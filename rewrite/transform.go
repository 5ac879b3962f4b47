package rewrite

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/beevik/etree"
)

// transformVersion changes whenever Apply's output for the same rules and
// input changes, so that caches keyed on Transform.ID never serve output of
// an older rewrite.
const transformVersion = "rewrite/v1"

// Transform is the rewrite as a step of the verify → transform → sign
// pipeline: it satisfies policyguard's
// interface{ ID() string; Apply(root *etree.Element) error }.
type Transform struct {
	rules Rules
	id    string
}

// NewTransform validates the rules and fixes the transform's identity.
func NewTransform(r Rules) (*Transform, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	r = r.withDefaults()
	r.Addresses = append([]string(nil), r.Addresses...)
	r.Certificate = append([]byte(nil), r.Certificate...)
	canon, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encoding rewrite rules: %w", err)
	}
	sum := sha256.Sum256(append([]byte(transformVersion+"\n"), canon...))
	return &Transform{rules: r, id: transformVersion + ":" + hex.EncodeToString(sum[:16])}, nil
}

// ID is a stable hash of the rules, certificate included: two transforms
// with the same ID produce the same output from the same input, so a
// re-sign cache may key on it.
func (t *Transform) ID() string { return t.id }

// Rules returns the rules with defaults filled in.
func (t *Transform) Rules() Rules {
	r := t.rules
	r.Addresses = append([]string(nil), r.Addresses...)
	r.Certificate = append([]byte(nil), r.Certificate...)
	return r
}

// Apply rewrites root in place; see the package function Apply for the
// contract on signatures. The rules were validated by NewTransform.
func (t *Transform) Apply(root *etree.Element) error {
	_, err := apply(root, t.rules)
	return err
}
