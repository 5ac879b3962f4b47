package canonical

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/legacygate/legacygate/internal/query"
)

// FuzzPath checks that Path never panics, refuses only with a known reason,
// and that what it accepts is canonical: ASCII, no escape left, no
// separator a Windows server would read differently, idempotent, and the
// same as the standard library's single decoding.
func FuzzPath(f *testing.F) {
	for _, tc := range pathRefusals {
		f.Add(tc.raw)
	}
	f.Add("/secars/secars.dll")
	f.Add("/content/%7BA1B2%7D/20240101/full.zip")
	f.Fuzz(func(t *testing.T, raw string) {
		got, err := Path(raw)
		if err != nil {
			var cerr *Error
			if !errors.As(err, &cerr) || !knownReason(cerr.Reason) || cerr.Part != "path" {
				t.Fatalf("Path(%q): unexpected error %v", raw, err)
			}
			return
		}
		if !strings.HasPrefix(got, "/") {
			t.Fatalf("Path(%q) = %q, not absolute", raw, got)
		}
		for i := 0; i < len(got); i++ {
			if c := got[i]; c < 0x20 || c >= 0x7f || strings.IndexByte(`\%:~;?#*"<>|`, c) >= 0 {
				t.Fatalf("Path(%q) = %q holds %q", raw, got, c)
			}
		}
		if got != "/" {
			for _, seg := range strings.Split(got[1:], "/") {
				if seg == "" || seg == "." || seg == ".." || strings.HasSuffix(seg, ".") || strings.HasSuffix(seg, " ") {
					t.Fatalf("Path(%q) = %q has segment %q", raw, got, seg)
				}
			}
		}
		if again, err := Path(got); err != nil || again != got {
			t.Fatalf("not idempotent: Path(%q) = %q, %v", got, again, err)
		}
		if std, err := url.PathUnescape(raw); err != nil || std != got {
			t.Fatalf("Path(%q) = %q but url.PathUnescape gives %q, %v", raw, got, std, err)
		}
	})
}

// FuzzQuery checks that Query never panics, and that what it accepts names
// each decision key at most once, in its listed spelling, changes nothing but
// key names, and is idempotent.
func FuzzQuery(f *testing.F) {
	for _, tc := range queryRefusals {
		f.Add(tc.raw)
	}
	f.Add("action=index&hostid=0A1B2C")
	f.Add("Action=12&HOSTID=0A1B2C")
	f.Add("hello,secars")
	f.Fuzz(func(t *testing.T, raw string) {
		got, err := Query(raw, decisionKeys)
		if err != nil {
			var cerr *Error
			if !errors.As(err, &cerr) || !knownReason(cerr.Reason) || cerr.Part != "query" {
				t.Fatalf("Query(%q): unexpected error %v", raw, err)
			}
			return
		}
		if again, err := Query(got, decisionKeys); err != nil || again != got {
			t.Fatalf("not idempotent: Query(%q) = %q, %v", got, again, err)
		}
		in, out := strings.Split(raw, "&"), strings.Split(got, "&")
		if len(in) != len(out) {
			t.Fatalf("Query(%q) = %q changed the pairs", raw, got)
		}
		seen := map[string]bool{}
		for i := range in {
			ik, iv, _ := strings.Cut(in[i], "=")
			ok, ov, _ := strings.Cut(out[i], "=")
			if iv != ov {
				t.Fatalf("Query(%q) = %q changed a value", raw, got)
			}
			key, err := url.QueryUnescape(ok)
			if err != nil {
				t.Fatalf("Query(%q) = %q: key %q does not decode: %v", raw, got, ok, err)
			}
			if strings.ContainsFunc(key, func(r rune) bool { return r >= 0x80 }) {
				t.Fatalf("Query(%q) = %q accepted the non-ASCII key %q", raw, got, key)
			}
			for _, k := range decisionKeys {
				if query.EqualFold(key, k) {
					if key != k || ok != k {
						t.Fatalf("Query(%q) = %q: decision key spelled %q", raw, got, ok)
					}
					if seen[k] {
						t.Fatalf("Query(%q) accepted %q twice", raw, k)
					}
					seen[k] = true
				}
			}
			if ok != ik && decisionKeyIndex(ik, decisionKeys) < 0 {
				t.Fatalf("Query(%q) = %q rewrote a non-decision key", raw, got)
			}
		}
	})
}

func knownReason(reason string) bool {
	for _, r := range Reasons {
		if r == reason {
			return true
		}
	}
	return false
}
