// Package canonical reduces a request's path and query to the one form a
// Windows manager (IIS, Apache on Windows, Tomcat behind them) and the
// gateway's own matchers agree on, or refuses them.
//
// A Windows backend treats many spellings as one file: `\` and `%5c` as `/`,
// `secars.dll.` and `secars.dll%20` as `secars.dll`, `SECARS~1.DLL` as
// `secars.dll`, `secars.dll::$DATA` as its default stream, full-width
// characters as their ASCII "best fit". A proxy that judges one spelling and
// forwards another lets a client reach paths its rules never saw. The rules
// here are therefore strict: the path is percent-decoded exactly once, and
// anything that a second decoding, a Windows file-name rule or a Tomcat path
// parameter could change is refused rather than repaired.
package canonical

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Reasons, the Reason of an *Error: short, stable, used as log fields and
// metric labels.
const (
	ReasonBadEscape         = "bad_escape"
	ReasonBackslash         = "backslash"
	ReasonEncodedSeparator  = "encoded_separator"
	ReasonNulOrControl      = "nul_or_control"
	ReasonInvalidUTF8       = "invalid_utf8"
	ReasonNonASCII          = "non_ascii"
	ReasonDoubleEncoding    = "double_encoding"
	ReasonDotSegment        = "dot_segment"
	ReasonEmptySegment      = "empty_segment"
	ReasonTrailingDotSpace  = "trailing_dot_or_space"
	ReasonAlternateStream   = "alternate_stream"
	ReasonShortName         = "short_name"
	ReasonReservedCharacter = "reserved_character"
	ReasonSemicolon         = "semicolon"
	ReasonRequestTarget     = "request_target"
	ReasonDuplicateKey      = "duplicate_key"
)

// Reasons lists every Reason this package returns, for callers that
// pre-register one metric series per reason.
var Reasons = []string{
	ReasonBadEscape, ReasonBackslash, ReasonEncodedSeparator, ReasonNulOrControl,
	ReasonInvalidUTF8, ReasonNonASCII, ReasonDoubleEncoding, ReasonDotSegment,
	ReasonEmptySegment, ReasonTrailingDotSpace, ReasonAlternateStream, ReasonShortName,
	ReasonReservedCharacter, ReasonSemicolon, ReasonRequestTarget, ReasonDuplicateKey,
}

// Error is a refusal: which part of the request (path, query), the rule that
// refused it, and where.
type Error struct {
	// Part is "path" or "query".
	Part string
	// Reason is one of the Reason constants.
	Reason string
	// Offset is the byte offset in the raw input where the rule fired.
	Offset int
	// Key is the decoded query key, for ReasonDuplicateKey.
	Key string
}

func (e *Error) Error() string {
	if e.Key != "" {
		return e.Part + ": " + e.Reason + " (key " + e.Key + ")"
	}
	return e.Part + ": " + e.Reason + " at byte " + itoa(e.Offset)
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// Path decodes rawPath (the path of a request target, before any '?',
// percent-encoded as sent) exactly once and returns the decoded path if
// every rule holds, or an *Error naming the first rule broken:
//
//   - it starts with '/' (request_target);
//   - every '%' starts a two-digit hex escape (bad_escape);
//   - no '\', raw or %5c (backslash); no %2f (encoded_separator);
//   - no byte below 0x20 and no 0x7f, raw or decoded (nul_or_control);
//   - no '%' after decoding, i.e. no %25 (double_encoding);
//   - ASCII only: a non-UTF-8 sequence such as the overlong %c0%af is
//     invalid_utf8, any other non-ASCII byte non_ascii (IIS maps U+FF0F to '/');
//   - no ':' (alternate_stream, `::$DATA`), no '~' (short_name, 8.3 names),
//     no ';' (semicolon, Tomcat's `..;/`), none of ?#*"<>| (reserved_character);
//   - no empty segment (`//`, a trailing '/') except the root path "/",
//     no "." or ".." segment, no segment ending in '.' or ' '.
//
// The result contains no '%', so Path(result) == result.
func Path(rawPath string) (string, error) {
	if rawPath == "" || rawPath[0] != '/' {
		return "", &Error{Part: "path", Reason: ReasonRequestTarget}
	}
	decoded, err := decodePath(rawPath)
	if err != nil {
		return "", err
	}
	if err := checkDecodedPath(decoded); err != nil {
		return "", err
	}
	return decoded, nil
}

// decodePath percent-decodes raw once, refusing separators, backslashes,
// controls and '%' produced by decoding. It allocates only when raw holds a
// '%'.
func decodePath(raw string) (string, error) {
	high := false
	escapes := 0
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '%':
			if i+2 >= len(raw) || !isHex(raw[i+1]) || !isHex(raw[i+2]) {
				return "", &Error{Part: "path", Reason: ReasonBadEscape, Offset: i}
			}
			d := unhex(raw[i+1])<<4 | unhex(raw[i+2])
			if reason := decodedByteReason(d); reason != "" {
				return "", &Error{Part: "path", Reason: reason, Offset: i}
			}
			high = high || d >= 0x80
			escapes++
			i += 2
		case c == '\\':
			return "", &Error{Part: "path", Reason: ReasonBackslash, Offset: i}
		case c < 0x20 || c == 0x7f:
			return "", &Error{Part: "path", Reason: ReasonNulOrControl, Offset: i}
		case c >= 0x80:
			high = true
		}
	}
	decoded := raw
	if escapes > 0 {
		var b strings.Builder
		b.Grow(len(raw) - 2*escapes)
		for i := 0; i < len(raw); i++ {
			if raw[i] == '%' {
				b.WriteByte(unhex(raw[i+1])<<4 | unhex(raw[i+2]))
				i += 2
				continue
			}
			b.WriteByte(raw[i])
		}
		decoded = b.String()
	}
	if high {
		reason := ReasonNonASCII
		if !utf8.ValidString(decoded) {
			reason = ReasonInvalidUTF8
		}
		return "", &Error{Part: "path", Reason: reason, Offset: firstHigh(raw)}
	}
	return decoded, nil
}

// decodedByteReason is why byte d may not come out of a %XX in a path.
func decodedByteReason(d byte) string {
	switch {
	case d == '/':
		return ReasonEncodedSeparator
	case d == '\\':
		return ReasonBackslash
	case d == '%':
		return ReasonDoubleEncoding
	case d < 0x20 || d == 0x7f:
		return ReasonNulOrControl
	}
	return ""
}

// firstHigh is the offset in raw of the first byte >= 0x80, raw or escaped.
func firstHigh(raw string) int {
	for i := 0; i < len(raw); i++ {
		if raw[i] >= 0x80 {
			return i
		}
		if raw[i] == '%' && i+2 < len(raw) && unhex(raw[i+1]) >= 8 {
			return i
		}
	}
	return 0
}

// checkDecodedPath applies the character and segment rules to the decoded
// path. Offsets are in the decoded path.
func checkDecodedPath(p string) error {
	if p == "/" {
		return nil
	}
	segStart := 1
	for i := 1; i <= len(p); i++ {
		if i < len(p) {
			switch p[i] {
			case ':':
				return &Error{Part: "path", Reason: ReasonAlternateStream, Offset: i}
			case '~':
				return &Error{Part: "path", Reason: ReasonShortName, Offset: i}
			case ';':
				return &Error{Part: "path", Reason: ReasonSemicolon, Offset: i}
			case '?', '#', '*', '"', '<', '>', '|':
				return &Error{Part: "path", Reason: ReasonReservedCharacter, Offset: i}
			case '/':
			default:
				continue
			}
		}
		seg := p[segStart:i]
		switch {
		case seg == "":
			return &Error{Part: "path", Reason: ReasonEmptySegment, Offset: i}
		case seg == "." || seg == "..":
			return &Error{Part: "path", Reason: ReasonDotSegment, Offset: segStart}
		case seg[len(seg)-1] == '.' || seg[len(seg)-1] == ' ':
			return &Error{Part: "path", Reason: ReasonTrailingDotSpace, Offset: i - 1}
		}
		segStart = i + 1
	}
	return nil
}

// ErrTooManyDecisionKeys is Query's answer to a configuration with more than
// MaxDecisionKeys decision keys.
var ErrTooManyDecisionKeys = errors.New("canonical: more than 64 decision keys")

// MaxDecisionKeys is the most decision keys Query accepts (a bit set tracks
// which were seen, so judging a query never allocates).
const MaxDecisionKeys = 64

// Query checks rawQuery (after the '?', as sent) and returns it with every
// decision key's name rewritten to its spelling in decisionKeys; every other
// byte is kept, in order. It refuses, with an *Error:
//
//   - a ';' anywhere (semicolon: some servers split pairs on it), a raw '#'
//     (reserved_character);
//   - a '%' not starting a two-digit hex escape (bad_escape);
//   - a NUL or control byte in any decoded key or value (nul_or_control);
//   - a decoded key or value that is not UTF-8 (invalid_utf8);
//   - a decision key named twice, compared after decoding ('+' is a space)
//     and ASCII case-insensitively (duplicate_key): a policy must not decide
//     on one value while the manager reads another.
//
// decisionKeys must hold at most MaxDecisionKeys plain ASCII names. The
// result is rawQuery itself (no allocation) unless a name is rewritten.
func Query(rawQuery string, decisionKeys []string) (string, error) {
	if len(decisionKeys) > MaxDecisionKeys {
		return "", ErrTooManyDecisionKeys
	}
	var seen uint64
	rewrite := false
	for start := 0; start <= len(rawQuery); {
		end := strings.IndexByte(rawQuery[start:], '&')
		if end < 0 {
			end = len(rawQuery)
		} else {
			end += start
		}
		pair := rawQuery[start:end]
		key, value, _ := strings.Cut(pair, "=")
		keyHigh, err := checkComponent(key, start)
		if err != nil {
			return "", err
		}
		valueHigh, err := checkComponent(value, start+len(key)+1)
		if err != nil {
			return "", err
		}
		// A manager converting the query to its ANSI code page "best fits"
		// full-width letters to ASCII (ａction is action): a non-ASCII key
		// could be a decision key's twin, a non-ASCII decision value the
		// value the gateway did not decide on.
		if keyHigh {
			return "", &Error{Part: "query", Reason: ReasonNonASCII, Offset: start}
		}
		if i := decisionKeyIndex(key, decisionKeys); i >= 0 {
			if valueHigh {
				return "", &Error{Part: "query", Reason: ReasonNonASCII, Offset: start + len(key) + 1, Key: decisionKeys[i]}
			}
			if seen&(1<<i) != 0 {
				return "", &Error{Part: "query", Reason: ReasonDuplicateKey, Offset: start, Key: decisionKeys[i]}
			}
			seen |= 1 << i
			rewrite = rewrite || key != decisionKeys[i]
		}
		start = end + 1
	}
	if !rewrite {
		return rawQuery, nil
	}
	var b strings.Builder
	b.Grow(len(rawQuery))
	for start := 0; start <= len(rawQuery); {
		end := strings.IndexByte(rawQuery[start:], '&')
		if end < 0 {
			end = len(rawQuery)
		} else {
			end += start
		}
		pair := rawQuery[start:end]
		key, value, hasValue := strings.Cut(pair, "=")
		if start > 0 {
			b.WriteByte('&')
		}
		if i := decisionKeyIndex(key, decisionKeys); i >= 0 {
			b.WriteString(decisionKeys[i])
		} else {
			b.WriteString(key)
		}
		if hasValue {
			b.WriteByte('=')
			b.WriteString(value)
		}
		start = end + 1
	}
	return b.String(), nil
}

// checkComponent checks one raw query key or value; offset is its position
// in the query, for the error. It reports whether raw holds a non-ASCII
// byte, raw or escaped.
func checkComponent(raw string, offset int) (bool, error) {
	high := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == ';':
			return false, &Error{Part: "query", Reason: ReasonSemicolon, Offset: offset + i}
		case c == '#':
			return false, &Error{Part: "query", Reason: ReasonReservedCharacter, Offset: offset + i}
		case c == '%':
			if i+2 >= len(raw) || !isHex(raw[i+1]) || !isHex(raw[i+2]) {
				return false, &Error{Part: "query", Reason: ReasonBadEscape, Offset: offset + i}
			}
			c = unhex(raw[i+1])<<4 | unhex(raw[i+2])
			i += 2
		}
		switch {
		case c < 0x20 || c == 0x7f:
			return false, &Error{Part: "query", Reason: ReasonNulOrControl, Offset: offset + i}
		case c >= 0x80:
			high = true
		}
	}
	if high && !validEscapedUTF8(raw) {
		return false, &Error{Part: "query", Reason: ReasonInvalidUTF8, Offset: offset}
	}
	return high, nil
}

// validEscapedUTF8 reports whether raw, whose escapes are known to be well
// formed, decodes to UTF-8. It collects one rune at a time in a small array,
// so it never allocates; utf8.Valid judges each (overlong forms, surrogates).
func validEscapedUTF8(raw string) bool {
	var r [utf8.UTFMax]byte
	n, need := 0, 0
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '%' {
			c = unhex(raw[i+1])<<4 | unhex(raw[i+2])
			i += 2
		}
		if need == 0 {
			switch {
			case c < utf8.RuneSelf:
				continue
			case c >= 0xf0 && c < 0xf8:
				need = 4
			case c >= 0xe0:
				need = 3
			case c >= 0xc0:
				need = 2
			default:
				return false // a continuation byte with no leading byte
			}
		}
		r[n] = c
		n++
		if n == need {
			if !utf8.Valid(r[:n]) {
				return false
			}
			n, need = 0, 0
		}
	}
	return need == 0
}

// decisionKeyIndex is the index in keys of the decision key raw names
// (decoded, '+' as space, ASCII case-insensitive), or -1.
func decisionKeyIndex(raw string, keys []string) int {
	for i, k := range keys {
		if decodedEqualFold(raw, k) {
			return i
		}
	}
	return -1
}

// decodedEqualFold reports whether raw, decoded, equals want ASCII
// case-insensitively. raw's escapes are known to be well formed.
func decodedEqualFold(raw, want string) bool {
	j := 0
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch c {
		case '%':
			c = unhex(raw[i+1])<<4 | unhex(raw[i+2])
			i += 2
		case '+':
			c = ' '
		}
		if j >= len(want) || lower(c) != lower(want[j]) {
			return false
		}
		j++
	}
	return j == len(want)
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
