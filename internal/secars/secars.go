// Package secars encodes and decodes the opaque query of SEPM-style agent
// requests, POST /secars/secars.dll?h=<hex>, as legacygate's emulators speak
// it and as a gateway configured with the site's KCS can read it.
//
// Real SEP clients obfuscate their query (numeric action codes, the host id,
// and more) with a key derived from the KCS value of SyLink.xml, and a
// manager answers 400 to a query made with the wrong key (Exploit-DB 33056,
// the proof of concept of CVE-2013-1612). The vendor's algorithm is not
// public; this package is a reversible obfuscation of our own with the same
// shape: the KCS is the key, the plaintext is a key=value list with a numeric
// action and a 32-hex host id, padded so that h= is about 1,000 hex
// characters, and a check value makes a wrong key an error rather than
// garbage. A 4-byte nonce starts every query, so one client's h= differs on
// every request (docs/protocol.md says why the gateway must not rely on the
// opposite). It is obfuscation, not encryption: anyone holding the KCS,
// which every client's SyLink.xml carries, reads and forges queries.
//
// Decode parses untrusted input: it is bounded (MaxHexLen), allocation-light
// and fuzzed. The package does not import Caddy.
package secars

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

// Action codes carried in the plaintext's action field. The numbers are
// ours: the real ones are not public.
const (
	ActionRegister = 10
	ActionIndex    = 12
	ActionProfile  = 13
	ActionSyLink   = 14
	ActionLog      = 15
)

// Limits of what Decode accepts.
const (
	// MaxHexLen bounds h=: real queries are about 1,000 hex characters.
	MaxHexLen = 4096
	// HostIDLen is the host id's length in hex digits (a 128-bit GUID).
	HostIDLen = 32
	nonceLen  = 4
	checkLen  = 4
	// targetPlain pads the plaintext to about 500 bytes, so h= is about
	// 1,000 hex characters as real clients send.
	targetPlain = 492
)

// Errors Decode wraps; errors.Is tells them apart.
var (
	ErrFormat = errors.New("secars: malformed h= query")
	ErrKey    = errors.New("secars: check value mismatch (wrong KCS or altered query)")
)

// Query is what an agent request says.
type Query struct {
	// Action is one of the Action* codes (others decode too).
	Action int
	// HostID is the client's host id, upper-case hex; empty for register.
	HostID string
	// Hostname is the client's computer name (register only needs it).
	Hostname string
	// Seq counts the client's requests; it is what makes two heartbeats
	// of one client differ even before the nonce.
	Seq uint64
}

// Key is the obfuscation key derived from a KCS value.
type Key struct {
	k [32]byte
}

// NewKey derives the key from a SyLink Kcs value (hex, as SyLink carries
// it; compared ignoring case).
func NewKey(kcs string) (Key, error) {
	kcs = strings.TrimSpace(kcs)
	if kcs == "" {
		return Key{}, errors.New("secars: kcs: empty")
	}
	if len(kcs) > 256 {
		return Key{}, fmt.Errorf("secars: kcs: %d characters, at most 256", len(kcs))
	}
	if _, err := hex.DecodeString(kcs); err != nil {
		return Key{}, fmt.Errorf("secars: kcs: want hex digits: %w", err)
	}
	return Key{k: sha256.Sum256([]byte("legacygate secars v1\x00" + strings.ToUpper(kcs)))}, nil
}

// keystream XORs buf with the stream for nonce, in place.
func (k Key) keystream(nonce [nonceLen]byte, buf []byte) {
	var block [32 + nonceLen + 8]byte
	copy(block[:32], k.k[:])
	copy(block[32:], nonce[:])
	for i := 0; i < len(buf); i += sha256.Size {
		binary.BigEndian.PutUint64(block[32+nonceLen:], uint64(i/sha256.Size))
		ks := sha256.Sum256(block[:])
		for j := 0; j < sha256.Size && i+j < len(buf); j++ {
			buf[i+j] ^= ks[j]
		}
	}
}

// Encode returns the hex of q's obfuscated plaintext under nonce: the value
// of h=, without the "h=".
func (k Key) Encode(q Query, nonce [nonceLen]byte) string {
	plain := fmt.Appendf(nil, "action=%d&hostid=%s&hostname=%s&seq=%d&ver=14.3.8289.5000&os=Windows&pad=",
		q.Action, q.HostID, q.Hostname, q.Seq)
	for len(plain) < targetPlain {
		plain = append(plain, 'x')
	}
	buf := make([]byte, nonceLen, nonceLen+len(plain)+checkLen)
	copy(buf, nonce[:])
	buf = append(buf, plain...)
	buf = binary.BigEndian.AppendUint32(buf, crc32.ChecksumIEEE(plain))
	k.keystream(nonce, buf[nonceLen:])
	return strings.ToUpper(hex.EncodeToString(buf))
}

// Decode reads the value of h= (hex, either case). A wrong key is ErrKey; a
// value that is not hex, too short or too long, or whose plaintext is not a
// list of known keys each given once, with a numeric action and, unless it
// registers, a 32-hex host id, is ErrFormat.
func (k Key) Decode(h string) (Query, error) {
	if len(h) > MaxHexLen {
		return Query{}, fmt.Errorf("%w: %d hex characters, at most %d", ErrFormat, len(h), MaxHexLen)
	}
	if len(h)%2 != 0 || len(h) < 2*(nonceLen+checkLen+1) {
		return Query{}, fmt.Errorf("%w: %d hex characters", ErrFormat, len(h))
	}
	var raw [MaxHexLen / 2]byte
	buf := raw[:len(h)/2]
	if _, err := hex.Decode(buf, []byte(h)); err != nil {
		return Query{}, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	var nonce [nonceLen]byte
	copy(nonce[:], buf)
	body := buf[nonceLen:]
	k.keystream(nonce, body)
	plain, check := body[:len(body)-checkLen], body[len(body)-checkLen:]
	if crc32.ChecksumIEEE(plain) != binary.BigEndian.Uint32(check) {
		return Query{}, ErrKey
	}
	return parsePlain(string(plain))
}

// parsePlain reads the decoded key=value list.
func parsePlain(plain string) (Query, error) {
	var q Query
	var seen uint8
	for part := range strings.SplitSeq(plain, "&") {
		key, value, ok := strings.Cut(part, "=")
		if !ok {
			return Query{}, fmt.Errorf("%w: %q is not key=value", ErrFormat, clip(part))
		}
		var bit uint8
		switch key {
		case "action":
			bit = 1
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 || n > 999 {
				return Query{}, fmt.Errorf("%w: action %q is not a number from 0 to 999", ErrFormat, clip(value))
			}
			q.Action = n
		case "hostid":
			bit = 2
			q.HostID = strings.ToUpper(value)
		case "hostname":
			bit = 4
			if len(value) > 255 {
				return Query{}, fmt.Errorf("%w: hostname of %d bytes", ErrFormat, len(value))
			}
			q.Hostname = value
		case "seq":
			bit = 8
			n, err := strconv.ParseUint(value, 10, 64)
			if err != nil {
				return Query{}, fmt.Errorf("%w: seq %q", ErrFormat, clip(value))
			}
			q.Seq = n
		case "ver":
			bit = 16
		case "os":
			bit = 32
		case "pad":
			bit = 64
		default:
			return Query{}, fmt.Errorf("%w: unknown key %q", ErrFormat, clip(key))
		}
		if seen&bit != 0 {
			return Query{}, fmt.Errorf("%w: %q given twice", ErrFormat, key)
		}
		seen |= bit
	}
	if seen&1 == 0 {
		return Query{}, fmt.Errorf("%w: no action", ErrFormat)
	}
	if q.Action != ActionRegister && !validHostID(q.HostID) {
		return Query{}, fmt.Errorf("%w: hostid %q is not %d hex digits", ErrFormat, clip(q.HostID), HostIDLen)
	}
	return q, nil
}

func validHostID(s string) bool {
	if len(s) != HostIDLen {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'A' || c > 'F') {
			return false
		}
	}
	return true
}

// clip shortens what an error quotes from untrusted input.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
