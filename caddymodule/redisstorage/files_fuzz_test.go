package redisstorage

import (
	"strings"
	"testing"
)

// FuzzCleanKey: a key is accepted only in one canonical form, which
// cleaning again leaves unchanged, so two spellings never name two Redis
// keys for one storage key.
func FuzzCleanKey(f *testing.F) {
	for _, s := range []string{"", "/", "a", "/a/b/", "a//b", "a/../b", "./a", "certificates/acme/x.crt", "a/./b", "..", "a/b/.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		k, err := cleanKey(key)
		if err != nil {
			return
		}
		if strings.HasPrefix(k, "/") || strings.HasSuffix(k, "/") || strings.Contains(k, "//") {
			t.Fatalf("cleanKey(%q) = %q: not canonical", key, k)
		}
		for seg := range strings.SplitSeq(k, "/") {
			if k != "" && (seg == "." || seg == "..") {
				t.Fatalf("cleanKey(%q) = %q: a dot segment", key, k)
			}
		}
		again, err := cleanKey(k)
		if err != nil || again != k {
			t.Fatalf("cleanKey(cleanKey(%q)) = %q, %v; want %q", key, again, err, k)
		}
	})
}
