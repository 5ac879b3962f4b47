package legacytls

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
)

// PinMismatchError is the handshake error when the upstream's key is not pinned.
type PinMismatchError struct {
	Seen     string   // the pin of the key the upstream presented
	Expected []string // the configured pins
	Subject  string   // the upstream certificate's subject
	Version  uint16   // the TLS version negotiated
}

func (e *PinMismatchError) Error() string {
	return fmt.Sprintf("legacy_tls: upstream key %s (%s) matches none of the pins %s",
		e.Seen, e.Subject, strings.Join(e.Expected, ", "))
}

// ParsePin decodes "sha256/<base64 of the SHA-256 of a SubjectPublicKeyInfo>".
func ParsePin(s string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	b64, ok := strings.CutPrefix(s, "sha256/")
	if !ok {
		return sum, fmt.Errorf("pin %q: want sha256/<base64>", s)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return sum, fmt.Errorf("pin %q: bad base64: %w", s, err)
	}
	if len(raw) != sha256.Size {
		return sum, fmt.Errorf("pin %q: %d bytes, want a %d-byte SHA-256", s, len(raw), sha256.Size)
	}
	copy(sum[:], raw)
	return sum, nil
}

// FormatPin is the pin form of a SPKI SHA-256.
func FormatPin(sum [sha256.Size]byte) string {
	return "sha256/" + base64.StdEncoding.EncodeToString(sum[:])
}

// PinOf is the pin of a certificate.
func PinOf(c *x509.Certificate) string {
	return FormatPin(sha256.Sum256(c.RawSubjectPublicKeyInfo))
}

// pinHint is how to get a real pin, for every pin error at provision time.
const pinHint = "run `legacygate pin HOST:PORT` against the manager and paste the pin line it prints"

// CheckPin parses a configured pin and refuses placeholders: a SHA-256
// whose bytes are all the same (sha256/AAAA…=, sha256/////…) is what
// documentation examples use, never the hash of a real key.
func CheckPin(s string) ([sha256.Size]byte, error) {
	sum, err := ParsePin(s)
	if err != nil {
		return sum, fmt.Errorf("%w; %s", err, pinHint)
	}
	if bytes.Count(sum[:], sum[:1]) == len(sum) {
		return sum, fmt.Errorf("pin %q is a placeholder (all %d bytes are 0x%02x), not a manager's key; %s", s, len(sum), sum[0], pinHint)
	}
	return sum, nil
}
