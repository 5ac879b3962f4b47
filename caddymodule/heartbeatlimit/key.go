package heartbeatlimit

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/internal/xmlscan"
)

// clientKey returns the request's key hash, and false when the key could
// not be read and the fallback key is used. An error (a key parameter or
// header given twice, a malformed escape) means the request is refused.
func (h *HeartbeatLimit) clientKey(r *http.Request) (uint64, bool, error) {
	if h.XMLBodyElement != "" {
		value, ok := xmlBodyKey(r, h.XMLBodyElement)
		if !ok {
			return h.fallback, false, nil
		}
		var buf [128]byte
		return h.hasher.Sum(appendPart(buf[:0], value)), true, nil
	}
	var buf [256]byte
	key := buf[:0]
	found := false
	for i := range h.parts {
		value, err := h.parts[i].value(r)
		if err != nil {
			return 0, false, err
		}
		found = found || value != ""
		key = appendPart(key, value)
	}
	if !found {
		return h.fallback, false, nil
	}
	return h.hasher.Sum(key), true, nil
}

// appendPart appends a length-prefixed part, so that no two lists
// of parts encode alike ("a b"+"c" differs from "a"+"b c"). The part is
// ASCII upper-cased: SEPM host ids are hex GUIDs, so folding merges only a
// client's own case variants, which would otherwise give one id with n
// letters 2^n buckets.
func appendPart(key []byte, part string) []byte {
	key = binary.AppendUvarint(key, uint64(len(part)))
	return query.AppendUpper(key, part)
}

// keyPart is one element of the key. The placeholders a
// heartbeat key is usually made of are read straight from the request,
// which costs no allocation; any other text goes through Caddy's replacer.
type keyPart struct {
	kind partKind
	name string // query parameter or canonical header name
	text string // the replacer template, for partReplacer
}

type partKind int

const (
	partClientIP partKind = iota
	partRemoteHost
	partQuery
	partHeader
	partReplacer
)

func parseKeyPart(text string) keyPart {
	if name, ok := query.Placeholder(text); ok {
		return keyPart{kind: partQuery, name: name}
	}
	inner, ok := strings.CutPrefix(text, "{")
	if ok {
		inner, ok = strings.CutSuffix(inner, "}")
	}
	if ok && !strings.ContainsAny(inner, "{}") {
		switch {
		case inner == "http.vars.client_ip" || inner == "client_ip":
			return keyPart{kind: partClientIP}
		case inner == "http.request.remote.host" || inner == "remote_host":
			return keyPart{kind: partRemoteHost}
		case strings.HasPrefix(inner, "http.request.header."):
			return keyPart{kind: partHeader, name: textproto.CanonicalMIMEHeaderKey(strings.TrimPrefix(inner, "http.request.header."))}
		case strings.HasPrefix(inner, "header."):
			return keyPart{kind: partHeader, name: textproto.CanonicalMIMEHeaderKey(strings.TrimPrefix(inner, "header."))}
		}
	}
	return keyPart{kind: partReplacer, text: text}
}

// value reads the part from r; a query parameter or header given more than
// once, or a malformed query, is an error.
func (p *keyPart) value(r *http.Request) (string, error) {
	switch p.kind {
	case partClientIP:
		if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
			return ip, nil
		}
		return remoteHost(r), nil
	case partRemoteHost:
		return remoteHost(r), nil
	case partQuery:
		v, _, err := query.Single(r.URL.RawQuery, p.name)
		return v, err
	case partHeader:
		v := r.Header[p.name]
		switch len(v) {
		case 0:
			return "", nil
		case 1:
			return v[0], nil
		}
		return "", fmt.Errorf("header %s: %w", p.name, query.ErrDuplicate)
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return "", nil
	}
	return repl.ReplaceKnown(p.text, ""), nil
}

func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// xmlBodyKey reads the text of the first element named element
// from the first 64 KiB of the request body, and puts those bytes back in
// front of the rest so the manager receives the body unchanged.
func xmlBodyKey(r *http.Request, element string) (string, bool) {
	if r.Body == nil || r.Body == http.NoBody {
		return "", false
	}
	limit := int64(xmlPrefix)
	if r.ContentLength >= 0 && r.ContentLength < limit {
		limit = r.ContentLength
	}
	prefix, err := io.ReadAll(io.LimitReader(r.Body, limit))
	r.Body = replayBody{Reader: io.MultiReader(bytes.NewReader(prefix), r.Body), Closer: r.Body}
	if err != nil {
		return "", false
	}
	return xmlscan.ElementText(prefix, element)
}

// replayBody is a body whose first bytes were read and put back.
type replayBody struct {
	io.Reader
	io.Closer
}
