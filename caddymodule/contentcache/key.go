package contentcache

import (
	"errors"
	"fmt"
	"strings"
)

// Bounds of a cache key's parts: a SEPM definitions URL is
// /content/{GUID}/{revision}/{file}, revisions such as 120120a011 and
// files such as full.zip or xdelta120119a011.dax.
const (
	maxRevisionLen = 64
	maxNameLen     = 128
	guidLen        = 36 // 8-4-4-4-12 hex digits
)

// errKeyShape is wrapped by every key refusal.
var errKeyShape = errors.New("not a plain <prefix>/<GUID>/<revision>/<file> path")

// cacheKey returns the cache key of a decoded request path under prefix
// (such as /content), or an error saying which part is not of the plain
// shape <prefix>/<GUID>/<revision>/<file>. The path is already the one
// canonical form manager_request let through; this only refuses to cache
// anything else, so no two spellings can share or poison one entry. The
// key is the path itself: URLs under prefix name immutable objects.
func cacheKey(prefix, path string) (string, error) {
	rest, ok := strings.CutPrefix(path, prefix)
	if !ok || !strings.HasPrefix(rest, "/") {
		return "", fmt.Errorf("path %q: %w: outside %s", truncate(path), errKeyShape, prefix)
	}
	parts := strings.Split(rest[1:], "/")
	if len(parts) != 3 {
		return "", fmt.Errorf("path %q: %w: %d segments after %s, want 3", truncate(path), errKeyShape, len(parts), prefix)
	}
	if !isGUID(parts[0]) {
		return "", fmt.Errorf("path %q: %w: GUID segment", truncate(path), errKeyShape)
	}
	if !isToken(parts[1], maxRevisionLen) {
		return "", fmt.Errorf("path %q: %w: revision segment", truncate(path), errKeyShape)
	}
	if !isToken(parts[2], maxNameLen) {
		return "", fmt.Errorf("path %q: %w: file segment", truncate(path), errKeyShape)
	}
	return path, nil
}

// isGUID accepts 8-4-4-4-12 hex digits of either case, bare or in braces
// as SEPM writes them.
func isGUID(s string) bool {
	if len(s) == guidLen+2 && s[0] == '{' && s[len(s)-1] == '}' {
		s = s[1 : len(s)-1]
	}
	if len(s) != guidLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

// isToken accepts 1 to max letters, digits, '.', '_' and '-', not starting
// with '.' and not ending with '.' (Windows drops a trailing dot).
func isToken(s string, max int) bool {
	if s == "" || len(s) > max || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// truncate bounds what a refused path puts in an error or log line.
func truncate(s string) string {
	const max = 256
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
