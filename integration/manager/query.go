package manager

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// SEPM actions, as they appear in ?action=…, and the hello probe.
const (
	ActionHello    = "hello"
	ActionRegister = "register"
	ActionIndex    = "index"
	ActionProfile  = "profile"
	ActionSyLink   = "sylink"
	ActionLog      = "log"
)

// helloQuery is the reachability probe's whole query string.
const helloQuery = "hello,secars"

const (
	maxQueryLen = 512
	hostIDLen   = 32 // hex digits, a 128-bit GUID as SEPM's HostId
)

// sepmQuery is a parsed secars/secreg query.
type sepmQuery struct {
	action string
	hostID string // upper-case hex; empty for hello and register
}

var errBadFormat = errors.New("bad format")

// parseSEPMQuery reads the raw query of a secars or secreg request. It
// accepts exactly "hello,secars", or action=A with hostid=H (32 hex digits)
// for every action but register; each key at most once, nothing else.
func parseSEPMQuery(raw string) (sepmQuery, error) {
	if raw == helloQuery {
		return sepmQuery{action: ActionHello}, nil
	}
	if len(raw) > maxQueryLen {
		return sepmQuery{}, fmt.Errorf("%w: query of %d bytes exceeds %d", errBadFormat, len(raw), maxQueryLen)
	}
	var q sepmQuery
	seen := map[string]bool{}
	for _, part := range strings.Split(raw, "&") {
		key, value, ok := strings.Cut(part, "=")
		if !ok {
			return sepmQuery{}, fmt.Errorf("%w: %q is not key=value", errBadFormat, part)
		}
		v, err := url.QueryUnescape(value)
		if err != nil {
			return sepmQuery{}, fmt.Errorf("%w: value of %q: %v", errBadFormat, key, err)
		}
		if seen[key] {
			return sepmQuery{}, fmt.Errorf("%w: %q given twice", errBadFormat, key)
		}
		seen[key] = true
		switch key {
		case "action":
			q.action = v
		case "hostid":
			q.hostID = strings.ToUpper(v)
		default:
			return sepmQuery{}, fmt.Errorf("%w: unknown key %q", errBadFormat, key)
		}
	}
	switch q.action {
	case ActionRegister:
		if seen["hostid"] {
			return sepmQuery{}, fmt.Errorf("%w: register takes no hostid", errBadFormat)
		}
		return q, nil
	case ActionIndex, ActionProfile, ActionSyLink, ActionLog:
		if !validHostID(q.hostID) {
			return sepmQuery{}, fmt.Errorf("%w: hostid %q is not %d hex digits", errBadFormat, q.hostID, hostIDLen)
		}
		return q, nil
	}
	return sepmQuery{}, fmt.Errorf("%w: unknown action %q", errBadFormat, q.action)
}

func validHostID(s string) bool {
	if len(s) != hostIDLen {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'A' || c > 'F') {
			return false
		}
	}
	return true
}
