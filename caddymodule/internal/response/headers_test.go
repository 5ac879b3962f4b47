package response

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzAnswerHeaders checks the singleton and encoding rules on manager
// header lines: an answer that passes both carries at most one line of each
// singleton header, and its encoding, if any, is identity.
func FuzzAnswerHeaders(f *testing.F) {
	f.Add("Content-Encoding", "identity", "Content-Encoding", "gzip")
	f.Add("content-encoding", "", "Content-Encoding", "gzip")
	f.Add("Content-Encoding", "identity, gzip", "X-Other", "1")
	f.Add("Content-Type", "text/plain", "CONTENT-TYPE", "text/xml")
	f.Add("Content-Encoding", " IDENTITY ", "Content-Length", "5")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		h := http.Header{}
		h[k1] = append(h[k1], v1)
		h[k2] = append(h[k2], v2)
		dup := RepeatedSingleton(h)
		enc := IdentityEncoded(h)
		for _, err := range []error{dup, enc} {
			if err != nil && HeaderName(err) == "" {
				t.Fatalf("refusal %v names no header", err)
			}
			if err != nil && len(err.Error()) > 1024 {
				t.Fatalf("refusal message of %d bytes", len(err.Error()))
			}
		}
		if dup != nil {
			return
		}
		for _, name := range SingletonHeaders {
			if n := len(HeaderValues(h, name)); n > 1 {
				t.Fatalf("%d lines of %s passed", n, name)
			}
		}
		if ce := HeaderValues(h, "Content-Encoding"); enc == nil && len(ce) == 1 && strings.ToLower(strings.TrimSpace(ce[0])) != "identity" {
			t.Fatalf("Content-Encoding %q passed as identity", ce[0])
		}
	})
}
