package query

import "strings"

// The prefixes of Caddy's query placeholders: the full name and the
// Caddyfile shorthand (which some modules also accept in JSON).
var placeholderPrefixes = []string{"{http.request.uri.query.", "{query."}

// Placeholder returns the key named by text when text is exactly one query
// placeholder, {http.request.uri.query.KEY} or {query.KEY}, so that the
// caller reads the key with Single instead of through Caddy's replacer
// (which takes the first of repeated values and matches names exactly).
func Placeholder(text string) (key string, ok bool) {
	for _, p := range placeholderPrefixes {
		if rest, ok := strings.CutPrefix(text, p); ok {
			key, ok = strings.CutSuffix(rest, "}")
			if ok && key != "" && !strings.ContainsAny(key, "{}") {
				return key, true
			}
		}
	}
	return "", false
}

// MentionsPlaceholder reports whether text holds a query placeholder
// anywhere: one that is not the whole of text would be read by Caddy's
// replacer, the second query parser this package exists to avoid.
func MentionsPlaceholder(text string) bool {
	for _, p := range placeholderPrefixes {
		if strings.Contains(text, p) {
			return true
		}
	}
	return false
}
