package heartbeatlimit

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/legacygate/legacygate/internal/xmlscan"
)

// clientKey returns the request's key hash, and false when the key could
// not be read and the fallback key is used.
func (h *HeartbeatLimit) clientKey(r *http.Request) (uint64, bool) {
	if h.XMLBodyElement != "" {
		value, ok := xmlBodyKey(r, h.XMLBodyElement)
		if !ok {
			return h.fallback, false
		}
		var buf [128]byte
		return h.hasher.Sum(appendPart(buf[:0], value)), true
	}
	var buf [256]byte
	key := buf[:0]
	found := false
	for i := range h.parts {
		value := h.parts[i].value(r)
		found = found || value != ""
		key = appendPart(key, value)
	}
	if !found {
		return h.fallback, false
	}
	return h.hasher.Sum(key), true
}

// appendPart appends a length-prefixed part, so that no two lists
// of parts encode alike ("a b"+"c" differs from "a"+"b c").
func appendPart(key []byte, part string) []byte {
	key = binary.AppendUvarint(key, uint64(len(part)))
	return append(key, part...)
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
		case strings.HasPrefix(inner, "http.request.uri.query."):
			return keyPart{kind: partQuery, name: strings.TrimPrefix(inner, "http.request.uri.query.")}
		case strings.HasPrefix(inner, "query."):
			return keyPart{kind: partQuery, name: strings.TrimPrefix(inner, "query.")}
		case strings.HasPrefix(inner, "http.request.header."):
			return keyPart{kind: partHeader, name: textproto.CanonicalMIMEHeaderKey(strings.TrimPrefix(inner, "http.request.header."))}
		case strings.HasPrefix(inner, "header."):
			return keyPart{kind: partHeader, name: textproto.CanonicalMIMEHeaderKey(strings.TrimPrefix(inner, "header."))}
		}
	}
	return keyPart{kind: partReplacer, text: text}
}

func (p *keyPart) value(r *http.Request) string {
	switch p.kind {
	case partClientIP:
		if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
			return ip
		}
		return remoteHost(r)
	case partRemoteHost:
		return remoteHost(r)
	case partQuery:
		return queryValue(r.URL.RawQuery, p.name)
	case partHeader:
		if v := r.Header[p.name]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return ""
	}
	return repl.ReplaceKnown(p.text, "")
}

func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// queryValue returns the first value of name in a raw query, as
// url.Values.Get would, without building the map.
func queryValue(query, name string) string {
	for query != "" {
		var pair string
		pair, query, _ = strings.Cut(query, "&")
		k, v, _ := strings.Cut(pair, "=")
		if escaped(k) {
			unescaped, err := url.QueryUnescape(k)
			if err != nil {
				continue
			}
			k = unescaped
		}
		if k != name {
			continue
		}
		if escaped(v) {
			unescaped, err := url.QueryUnescape(v)
			if err != nil {
				continue
			}
			v = unescaped
		}
		return v
	}
	return ""
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

// escaped reports whether a query component needs unescaping.
func escaped(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' || s[i] == '+' {
			return true
		}
	}
	return false
}

// replayBody is a body whose first bytes were read and put back.
type replayBody struct {
	io.Reader
	io.Closer
}
