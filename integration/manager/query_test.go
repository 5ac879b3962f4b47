package manager

import (
	"errors"
	"net/url"
	"testing"
)

const goodHost = "0123456789ABCDEF0123456789ABCDEF"

func TestParseSEPMQuery(t *testing.T) {
	tests := []struct {
		raw     string
		want    sepmQuery
		wantErr bool
	}{
		{"hello,secars", sepmQuery{action: ActionHello}, false},
		{"action=register", sepmQuery{action: ActionRegister}, false},
		{"action=index&hostid=" + goodHost, sepmQuery{ActionIndex, goodHost}, false},
		{"hostid=" + goodHost + "&action=profile", sepmQuery{ActionProfile, goodHost}, false},
		{"action=sylink&hostid=0123456789abcdef0123456789abcdef", sepmQuery{ActionSyLink, goodHost}, false},
		{"action=log&hostid=" + goodHost, sepmQuery{ActionLog, goodHost}, false},
		{"action=%69ndex&hostid=" + goodHost, sepmQuery{ActionIndex, goodHost}, false},
		{"", sepmQuery{}, true},
		{"hello", sepmQuery{}, true},
		{"hello,secars&action=index", sepmQuery{}, true},
		{"action=index", sepmQuery{}, true},
		{"action=index&hostid=", sepmQuery{}, true},
		{"action=index&hostid=" + goodHost + "0", sepmQuery{}, true},
		{"action=index&hostid=G123456789ABCDEF0123456789ABCDEF", sepmQuery{}, true},
		{"action=register&hostid=" + goodHost, sepmQuery{}, true},
		{"action=index&hostid=" + goodHost + "&hostid=" + goodHost, sepmQuery{}, true},
		{"action=index&hostid=" + goodHost + "&x=1", sepmQuery{}, true},
		{"action=index&&hostid=" + goodHost, sepmQuery{}, true},
		{"action=%zz", sepmQuery{}, true},
		{"action=shutdown", sepmQuery{}, true},
		{"h=4A6F2B", sepmQuery{}, true},
	}
	for _, tt := range tests {
		got, err := parseSEPMQuery(tt.raw)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseSEPMQuery(%q) = %+v, %v; want %+v, error %v", tt.raw, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !errors.Is(err, errBadFormat) {
			t.Errorf("parseSEPMQuery(%q) error %v does not wrap errBadFormat", tt.raw, err)
		}
	}
}

// FuzzParseSEPMQuery checks that any query either fails with errBadFormat or
// yields a known action with a well-formed host id, and that an accepted
// query means the same once re-encoded.
func FuzzParseSEPMQuery(f *testing.F) {
	for _, s := range []string{
		"hello,secars", "action=register", "action=index&hostid=" + goodHost,
		"hostid=" + goodHost + "&action=log", "action=%70rofile&hostid=" + goodHost,
		"action=index&action=index", "a=b=c&&", "%", "h=0011AABB",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := parseSEPMQuery(raw)
		if err != nil {
			if !errors.Is(err, errBadFormat) {
				t.Fatalf("error %v does not wrap errBadFormat", err)
			}
			return
		}
		switch q.action {
		case ActionHello, ActionRegister:
			if q.hostID != "" {
				t.Fatalf("%s with hostid %q", q.action, q.hostID)
			}
			if q.action == ActionHello {
				return
			}
		case ActionIndex, ActionProfile, ActionSyLink, ActionLog:
			if !validHostID(q.hostID) {
				t.Fatalf("accepted hostid %q", q.hostID)
			}
		default:
			t.Fatalf("accepted action %q", q.action)
		}
		v := url.Values{"action": {q.action}}
		if q.hostID != "" {
			v.Set("hostid", q.hostID)
		}
		again, err := parseSEPMQuery(v.Encode())
		if err != nil || again != q {
			t.Fatalf("re-encoded %q parses as %+v, %v; want %+v", v.Encode(), again, err, q)
		}
	})
}
