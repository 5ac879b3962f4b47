package contentcache

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// FuzzCacheKey: an accepted path is exactly prefix/GUID/revision/file in
// the allowed alphabet, so no dot segment, separator or escape can reach a
// key; whatever the input, cacheKey does not panic.
func FuzzCacheKey(f *testing.F) {
	for _, seed := range []string{
		testKey,
		"/content/C60DC234-65F9-4674-94AE-62158EFCA433/1/full.zip",
		"/content/{C60DC234-65F9-4674-94AE-62158EFCA433}/../full.zip",
		"/content/{C60DC234-65F9-4674-94AE-62158EFCA433}/1/full.zip.",
		"/content//1/full.zip",
		"/contentx/{C60DC234-65F9-4674-94AE-62158EFCA433}/1/full.zip",
		"/content/{C60DC234-65F9-4674-94AE-62158EFCA433}/1/a\\b",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, path string) {
		key, err := cacheKey(defaultPrefix, path)
		if err != nil {
			return
		}
		if key != path {
			t.Fatalf("key %q differs from the path %q", key, path)
		}
		parts := strings.Split(strings.TrimPrefix(path, defaultPrefix+"/"), "/")
		if !strings.HasPrefix(path, defaultPrefix+"/") || len(parts) != 3 {
			t.Fatalf("accepted %q: not prefix and three segments", path)
		}
		for _, p := range parts {
			if p == "" || p == "." || p == ".." || strings.HasSuffix(p, ".") || strings.ContainsAny(p, "%\\:;?#\x00 ") {
				t.Fatalf("accepted %q with segment %q", path, p)
			}
		}
	})
}

// FuzzCachedRange: whatever Range, If-Range and If-None-Match a client
// sends for a cached object, the answer is a whole 200, a 206 whose bytes
// are exactly the ranges it names, a 304, 412 or a 416: never a partial
// body passed off as the object.
func FuzzCachedRange(f *testing.F) {
	for _, seed := range [][3]string{
		{"bytes=0-9", "", ""},
		{"bytes=-5", "", ""},
		{"bytes=10-", `"v1"`, ""},
		{"bytes=0-1,5-6", "", ""},
		{"bytes=999999-", "", ""},
		{"bytes=5-1", "", `"v1"`},
		{"items=0-1", "", "*"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	body := bytes.Repeat([]byte("0123456789abcdef"), 256)
	c := &ContentCache{Prefix: defaultPrefix}
	m := meta{Key: testKey, Size: int64(len(body)), ContentType: "application/zip", ETag: `"v1"`, LastModified: "Tue, 01 Dec 2026 10:00:00 GMT"}
	f.Fuzz(func(t *testing.T, rangeHeader, ifRange, ifNoneMatch string) {
		r := httptest.NewRequest(http.MethodGet, "http://gw"+testKey, nil)
		for k, v := range map[string]string{"Range": rangeHeader, "If-Range": ifRange, "If-None-Match": ifNoneMatch} {
			if v != "" {
				r.Header[k] = []string{v}
			}
		}
		w := httptest.NewRecorder()
		c.served = noopCounter{}
		c.serveContent(w, r, m, bytes.NewReader(body))
		got := w.Body.Bytes()
		switch w.Code {
		case http.StatusOK:
			if !bytes.Equal(got, body) {
				t.Fatalf("200 with %d bytes, want the whole %d", len(got), len(body))
			}
		case http.StatusPartialContent:
			if strings.HasPrefix(w.Header().Get("Content-Type"), "multipart/byteranges") {
				return
			}
			var start, end, size int64
			cr := w.Header().Get("Content-Range")
			if _, err := parseContentRange(cr, &start, &end, &size); err != nil {
				t.Fatalf("206 with Content-Range %q: %v", cr, err)
			}
			if size != int64(len(body)) || !bytes.Equal(got, body[start:end+1]) {
				t.Fatalf("206 %q with %d bytes that are not that range", cr, len(got))
			}
		case http.StatusNotModified, http.StatusPreconditionFailed, http.StatusRequestedRangeNotSatisfiable:
		default:
			t.Fatalf("status %d", w.Code)
		}
	})
}

// parseContentRange reads "bytes START-END/SIZE".
func parseContentRange(s string, start, end, size *int64) (int, error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, strconv.ErrSyntax
	}
	rng, total, ok := strings.Cut(rest, "/")
	first, last, ok2 := strings.Cut(rng, "-")
	if !ok || !ok2 {
		return 0, strconv.ErrSyntax
	}
	var err error
	for _, p := range []struct {
		s   string
		dst *int64
	}{{first, start}, {last, end}, {total, size}} {
		if *p.dst, err = strconv.ParseInt(p.s, 10, 64); err != nil {
			return 0, err
		}
	}
	if *start > *end || *end >= *size {
		return 0, strconv.ErrRange
	}
	return 3, nil
}
