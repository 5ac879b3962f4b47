package harness

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRawUpstreamRecordsHeadsByteForByteAndAnswersAsTold(t *testing.T) {
	u := StartRawUpstream(t, func(head []byte) []byte {
		return RawAnswer("500 Internal Server Error", []string{"Server: Microsoft-IIS/10.0", "X-A: 1", "X-A: 2"}, "stack trace")
	})
	conn, err := net.DialTimeout("tcp", u.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	first := "GET /secars/..%5c..%5cadmin?a=1 HTTP/1.1\r\nHost: x\r\nx-odd:  spaced \r\n\r\n"
	second := "POST /secars/secars.dll HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: v\r\n\r\n"
	br := bufio.NewReader(conn)
	for _, req := range []string{first, second} {
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 500 || string(body) != "stack trace" || len(resp.Header["X-A"]) != 2 {
			t.Fatalf("answer = %d %q %v, want the canned 500 with both X-A lines", resp.StatusCode, body, resp.Header)
		}
	}

	reqs := u.Requests()
	if len(reqs) != 2 {
		t.Fatalf("recorded %d requests, want 2", len(reqs))
	}
	if string(reqs[0].Head) != first {
		t.Errorf("first head = %q, want %q", reqs[0].Head, first)
	}
	if got := reqs[0].Target(); got != "/secars/..%5c..%5cadmin?a=1" {
		t.Errorf("Target() = %q", got)
	}
	if got := reqs[0].Header("X-Odd"); len(got) != 1 || got[0] != "spaced" {
		t.Errorf("Header(X-Odd) = %q", got)
	}
	if !strings.HasPrefix(reqs[1].Line(), "POST /secars/secars.dll ") || string(reqs[1].Body) != "abc" {
		t.Errorf("second request = %q body %q, want the POST with body abc", reqs[1].Line(), reqs[1].Body)
	}
	if len(u.Heads()) != 2 {
		t.Errorf("Heads() has %d entries, want 2", len(u.Heads()))
	}
	u.Reset()
	if len(u.Requests()) != 0 {
		t.Error("Reset() kept requests")
	}
}

func TestRawUpstreamClosesAfterAnAnswerSayingConnectionClose(t *testing.T) {
	u := StartRawUpstream(t, func([]byte) []byte {
		return []byte("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbye")
	})
	conn, err := net.DialTimeout("tcp", u.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(all), "\r\n\r\nbye") {
		t.Errorf("read %q, want the whole answer then EOF", all)
	}
}
