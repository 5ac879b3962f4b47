// Package query reads keys from a raw URL query the one way every legacygate
// module judges them: all values of a key, so that a key given twice is
// seen, keys matched after decoding and ASCII case-insensitively, and an
// error, never a guess, where an escape is malformed.
//
// The gateway stands in front of Windows managers (IIS, Apache on Windows)
// whose query readers join, pick the first or pick the last of repeated
// keys, and compare key names without regard to case. A decision taken on
// one value while the manager reads another is a bypass, so callers refuse a
// request whose decision key is ambiguous rather than pick a value.
//
// '&' is the only separator; ';' is an ordinary byte of a key or value.
// Go's url.ParseQuery drops pairs holding ';' (and Caddy's {query.*}
// placeholders with it), while the managers' readers keep them, so no
// choice about ';' agrees with both; the manager_request handler in front
// of the manager refuses any query holding ';', and here it is never a
// separator that could split one pair into two keys.
//
// The package does not import Caddy.
package query

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"
)

// ErrDuplicate reports a key given more than once.
var ErrDuplicate = errors.New("key given more than once")

// ErrEscape reports a malformed %-escape in a key, or in the value of the
// key looked up.
var ErrEscape = errors.New("malformed escape")

// ErrAmbiguousKey reports a key that is not the key looked up here but that
// another reader may take for it: equal under Unicode case mapping (hostıd
// is HOSTID to .NET's case-insensitive comparison), up to a NUL byte
// (hostid%00x is hostid to a C string comparison) or after Windows' "best
// fit" of full-width letters (ａction is action).
var ErrAmbiguousKey = errors.New("key another reader may take for the one looked up")

// Values appends to dst the decoded values of key in raw, in order, and
// returns the extended slice. A pair without '=' has the empty value. Key
// names are compared after decoding, ignoring ASCII case. An error wraps
// ErrEscape or ErrAmbiguousKey and names the pair; dst is returned as far as
// it was filled.
//
// With a dst of spare capacity and no escapes in the values found, Values
// allocates nothing.
func Values(dst []string, raw, key string) ([]string, error) {
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		v, ok, err := valueOf(pair, key)
		if err != nil {
			return dst, err
		}
		if ok {
			dst = append(dst, v)
		}
	}
	return dst, nil
}

// Single returns the one value of key in raw. found is false when raw does
// not name key; err wraps ErrDuplicate when it names key more than once,
// and ErrEscape or ErrAmbiguousKey as Values does. Only a value that needs
// decoding allocates.
func Single(raw, key string) (value string, found bool, err error) {
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		v, ok, err := valueOf(pair, key)
		if err != nil {
			return "", false, err
		}
		if !ok {
			continue
		}
		if found {
			return "", false, fmt.Errorf("query key %q: %w", key, ErrDuplicate)
		}
		value, found = v, true
	}
	return value, found, nil
}

// valueOf returns the decoded value of pair if its key is key.
func valueOf(pair, key string) (string, bool, error) {
	if pair == "" {
		return "", false, nil
	}
	k, v, _ := strings.Cut(pair, "=")
	if needsDecoding(k) {
		dk, err := url.QueryUnescape(k)
		if err != nil {
			return "", false, fmt.Errorf("query key %q: %w: %w", k, ErrEscape, err)
		}
		k = dk
	}
	if !EqualFold(k, key) {
		if ambiguous(k, key) {
			return "", false, fmt.Errorf("query key %q for %q: %w", k, key, ErrAmbiguousKey)
		}
		return "", false, nil
	}
	if !needsDecoding(v) {
		return v, true, nil
	}
	dv, err := url.QueryUnescape(v)
	if err != nil {
		return "", false, fmt.Errorf("query key %q: value %q: %w: %w", key, v, ErrEscape, err)
	}
	return dv, true, nil
}

// needsDecoding reports whether a query component holds an escape or '+'.
func needsDecoding(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' || s[i] == '+' {
			return true
		}
	}
	return false
}

// EqualFold reports whether a and b are equal ignoring ASCII case only.
func EqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

// HasPrefixFold is strings.HasPrefix ignoring ASCII case only.
func HasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && EqualFold(s[:len(prefix)], prefix)
}

// ambiguous reports whether k, which is not key, equals it up to a NUL byte
// or under Unicode simple folding or upper- or lower-case mapping, as other
// platforms' comparisons do.
func ambiguous(k, key string) bool {
	if !hasNULOrNonASCII(k) && !hasNonASCII(key) {
		return false
	}
	if before, _, ok := strings.Cut(k, "\x00"); ok && EqualFold(before, key) {
		return true
	}
	return unicodeFold(k, key) || EqualFold(bestFit(k), key)
}

// bestFit maps the full-width forms U+FF01..U+FF5E to the ASCII they stand
// for, as a Windows manager converting the query to its ANSI code page
// does ("ａction" is "action" to it). Only called on non-ASCII keys.
func bestFit(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 0xff01 && r <= 0xff5e {
			return r - 0xff01 + '!'
		}
		return r
	}, s)
}

// unicodeFold reports whether a or b holds non-ASCII and they are equal
// under Unicode simple folding or upper- or lower-case mapping.
func unicodeFold(a, b string) bool {
	if !hasNonASCII(a) && !hasNonASCII(b) {
		return false
	}
	if !utf8.ValidString(a) || !utf8.ValidString(b) {
		return false
	}
	return strings.EqualFold(a, b) || strings.ToUpper(a) == strings.ToUpper(b) || strings.ToLower(a) == strings.ToLower(b)
}

func hasNULOrNonASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 || s[i] >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

func hasNonASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// AppendUpper appends s to dst with ASCII letters upper-cased and every
// other byte as it is: the one folding of client ids (SEPM host ids are
// upper-case hex GUIDs; folding merges only a client's own case variants).
func AppendUpper(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// Upper returns s with ASCII letters upper-cased, allocating only if s has
// a lower-case ASCII letter.
func Upper(s string) string {
	for i := 0; i < len(s); i++ {
		if 'a' <= s[i] && s[i] <= 'z' {
			return string(AppendUpper(make([]byte, 0, len(s)), s))
		}
	}
	return s
}
