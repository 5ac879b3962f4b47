package response

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// SingletonHeaders may appear at most once in a manager answer. Two lines
// of one of them (Content-Encoding: identity, then gzip) are read one way by
// the gateway and another way by a client, so such an answer is refused.
var SingletonHeaders = [...]string{"Content-Encoding", "Content-Type", "Content-Length", "Transfer-Encoding"}

// ReasonDuplicateHeader is the refusal reason of an answer that repeats one
// of SingletonHeaders, the same token in every guard's metric.
const ReasonDuplicateHeader = "duplicate_header"

// HeaderError names the manager header that made an answer ambiguous; the
// refusal's log line carries the name in its own field (see HeaderName).
type HeaderError struct {
	Name   string
	Values []string
	What   string
}

// Bounds on what a HeaderError puts in a log line.
const (
	maxLoggedHeaderValues = 4
	maxLoggedHeaderValue  = 64
)

func (e *HeaderError) Error() string {
	shown := e.Values[:min(len(e.Values), maxLoggedHeaderValues)]
	quoted := make([]string, len(shown))
	for i, v := range shown {
		if len(v) > maxLoggedHeaderValue {
			v = v[:maxLoggedHeaderValue] + "…"
		}
		quoted[i] = strconv.Quote(v)
	}
	return fmt.Sprintf("%s: %s (%d lines: %s)", e.Name, e.What, len(e.Values), strings.Join(quoted, ", "))
}

// HeaderName is the name of the header err is about, "" when none.
func HeaderName(err error) string {
	if he, ok := errors.AsType[*HeaderError](err); ok {
		return he.Name
	}
	return ""
}

// HeaderValues gathers the lines of the header name under any spelling of
// its key: a map filled by hand may hold "content-encoding" beside
// "Content-Encoding", and both would be written to the client.
func HeaderValues(h http.Header, name string) []string {
	var values []string
	for k, vs := range h {
		if len(k) == len(name) && strings.EqualFold(k, name) {
			values = append(values, vs...)
		}
	}
	return values
}

// RepeatedSingleton refuses an answer that carries one of SingletonHeaders
// on more than one line. It runs on every answer in scope and allocates
// only to report a refusal.
func RepeatedSingleton(h http.Header) error {
	if name := Repeated(h, SingletonHeaders[:]); name != "" {
		return &HeaderError{Name: name, Values: HeaderValues(h, name), What: "repeated, it may appear once"}
	}
	return nil
}

// Repeated returns the first of names that h carries on more than one
// line, under any spelling of its key, or "" when each appears at most
// once. It does not allocate.
func Repeated(h http.Header, names []string) string {
	for _, name := range names {
		lines := 0
		for k, vs := range h {
			if len(k) == len(name) && strings.EqualFold(k, name) {
				lines += len(vs)
			}
		}
		if lines > 1 {
			return name
		}
	}
	return ""
}

// IdentityEncoded accepts an answer without Content-Encoding or with
// exactly one line that says identity. Anything else (gzip, an empty value,
// a list such as "identity, gzip") names bytes the gateway would judge
// encoded one way and the client decode another, although identity was
// asked for.
func IdentityEncoded(h http.Header) error {
	values := HeaderValues(h, "Content-Encoding")
	if len(values) == 0 || (len(values) == 1 && strings.EqualFold(strings.TrimSpace(values[0]), "identity")) {
		return nil
	}
	return &HeaderError{Name: "Content-Encoding", Values: values, What: "not identity, although identity was asked"}
}

// MediaTypes checks the media types of an allow_non_xml list and returns
// them lower-cased; field prefixes the error, e.g.
// "policy_guard: allow_non_xml".
func MediaTypes(field string, list []string) ([]string, error) {
	out := make([]string, 0, len(list))
	for _, s := range list {
		mediaType, params, err := mime.ParseMediaType(s)
		typ, sub, ok := strings.Cut(mediaType, "/")
		if err != nil || len(params) > 0 || !ok || typ == "" || sub == "" || strings.ContainsAny(mediaType, "*") || strings.Count(mediaType, "/") != 1 {
			return nil, fmt.Errorf("%s: %q is not a media type (want type/subtype, without parameters or wildcards)", field, s)
		}
		out = append(out, mediaType)
	}
	return out, nil
}

// MediaTypeListed reports whether the answer's Content-Type names one of
// the (lower-cased, see MediaTypes) media types in list. A missing,
// repeated or unreadable Content-Type is never listed.
func MediaTypeListed(h http.Header, list []string) bool {
	if len(list) == 0 {
		return false
	}
	values := HeaderValues(h, "Content-Type")
	if len(values) != 1 {
		return false
	}
	mediaType, _, err := mime.ParseMediaType(values[0])
	if err != nil {
		return false
	}
	return slices.Contains(list, mediaType)
}
