package manager

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

func TestContentServesEachURLItsOwnStableBodyOfTheConfiguredSize(t *testing.T) {
	m := startManager(t, Config{ContentSize: 200_000})
	base := "http://" + m.Addrs().HTTP
	path := "/content/{C60DC234-65F9-4674-94AE-62158EFCA433}/120120a011/full.zip"
	fetch := func(path string, header map[string]string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}
	resp, body := fetch(path, nil)
	if resp.StatusCode != http.StatusOK || len(body) != 200_000 || !bytes.Equal(body, ContentBody(path, 200_000)) {
		t.Fatalf("status %d, %d bytes; want 200 and ContentBody", resp.StatusCode, len(body))
	}
	if _, other := fetch("/content/{C60DC234-65F9-4674-94AE-62158EFCA433}/120121a011/full.zip", nil); bytes.Equal(other[:64], body[:64]) {
		t.Fatal("two revisions have the same body")
	}
	resp, part := fetch(path, map[string]string{"Range": "bytes=70000-70009"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, body[70000:70010]) {
		t.Fatalf("range: status %d", resp.StatusCode)
	}
	if resp, _ := fetch("/content/x/full.zip", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a short path: status %d, want 404", resp.StatusCode)
	}
	if n := m.Requests(CountContent); n != 3 {
		t.Fatalf("%d content requests counted, want 3", n)
	}
	if n := m.ContentBytes(); n != 400_010 {
		t.Fatalf("ContentBytes %d, want 400010", n)
	}
}
