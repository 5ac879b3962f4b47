package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
)

// managerRequestGateway is a plain-HTTP gateway with manager_request in
// front of reverse_proxy to a raw upstream whose answer depends on the
// request's path.
func managerRequestGateway(t *testing.T) (addr string, g *harness.Gateway, up *harness.RawUpstream) {
	t.Helper()
	up = harness.StartRawUpstream(t, func(head []byte) []byte {
		target := harness.RawRequest{Head: head}.Target()
		switch {
		case strings.HasPrefix(target, "/content/redirect"):
			return harness.RawAnswer("302 Found", []string{
				"Server: Microsoft-IIS/10.0",
				"Via: 1.1 manager-cache",
				"X-AspNet-Version: 4.0.30319",
				"X-Powered-By: ASP.NET",
				"Set-Cookie: ASP.NET_SessionId=abc; path=/",
				"Location: http://10.0.0.5:8014/secars/x",
			}, "")
		case strings.HasPrefix(target, "/content/crash"):
			return harness.RawAnswer("500 Internal Server Error", []string{"Content-Type: text/html", "Server: Microsoft-IIS/10.0"},
				"<h1>Server Error</h1><pre>System.NullReferenceException\n   at Sem.Secars.Handle() in C:\\build\\secars.cs:line 42</pre>")
		default:
			return harness.RawAnswer("200 OK", []string{"Content-Type: text/plain", "Server: Microsoft-IIS/10.0"}, "OK")
		}
	})
	port := harness.FreePort(t)
	g = harness.StartGateway(t, fmt.Sprintf(`http://127.0.0.1:%d {
	manager_request {
		allow GET POST /secars/secars.dll
		allow POST /secreg/secreg.dll
		allow GET HEAD /content/*
		decision_keys action hostid
	}
	reverse_proxy %s
}
`, port, up.Addr))
	return fmt.Sprintf("127.0.0.1:%d", port), g, up
}

// rawExchange sends head (a request without body) on a new connection, byte
// for byte, and reads the answer.
func rawExchange(t *testing.T, addr, head string) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", head, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestManagerRequestCanonicalizesThroughARealGateway(t *testing.T) {
	addr, g, up := managerRequestGateway(t)

	t.Run("traversal path is refused and never sent up", func(t *testing.T) {
		up.Reset()
		resp, body := rawExchange(t, addr, "GET /secars/..%5c..%5cadmin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		if resp.StatusCode != 400 || body != "400 Bad Request\n" {
			t.Errorf("answer %d %q, want 400 with the fixed body", resp.StatusCode, body)
		}
		if got := resp.Header.Values("Server"); len(got) != 0 {
			t.Errorf("Server %q on a refusal", got)
		}
		if reqs := up.Requests(); len(reqs) != 0 {
			t.Errorf("the upstream received %q", reqs[0].Line())
		}
		g.WaitLog(t, 5*time.Second, `"manager request refused"`, `"reason":"backslash"`, `"path":"/secars/..%5c..%5cadmin"`)
	})

	t.Run("allowed path reaches the upstream in its canonical spelling", func(t *testing.T) {
		up.Reset()
		resp, body := rawExchange(t, addr, "GET /SECARS/secars%2edll?Action=index&hostid=0A1B HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Real-IP: 10.9.9.9\r\nX-Original-URL: /servlet/ConsoleServlet\r\n\r\n")
		if resp.StatusCode != 200 || body != "OK" {
			t.Fatalf("answer %d %q, want the upstream's 200 OK", resp.StatusCode, body)
		}
		reqs := up.Requests()
		if len(reqs) != 1 {
			t.Fatalf("the upstream received %d requests, want 1", len(reqs))
		}
		if got, want := reqs[0].Line(), "GET /secars/secars.dll?action=index&hostid=0A1B HTTP/1.1"; got != want {
			t.Errorf("upstream request line %q, want %q", got, want)
		}
		for _, name := range []string{"X-Real-IP", "X-Original-URL"} {
			if v := reqs[0].Header(name); len(v) != 0 {
				t.Errorf("%s %q reached the upstream", name, v)
			}
		}
		if got := resp.Header.Values("Server"); len(got) != 0 {
			t.Errorf("the manager's Server %q reached the client", got)
		}
	})

	t.Run("TRACE is 405 and never sent up", func(t *testing.T) {
		up.Reset()
		resp, _ := rawExchange(t, addr, "TRACE /secars/secars.dll HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, POST" {
			t.Errorf("answer %d Allow %q, want 405 with Allow: GET, POST", resp.StatusCode, resp.Header.Get("Allow"))
		}
		if reqs := up.Requests(); len(reqs) != 0 {
			t.Errorf("the upstream received %q", reqs[0].Line())
		}
	})

	t.Run("manager banners, cookies and internal Location do not reach the client", func(t *testing.T) {
		resp, _ := rawExchange(t, addr, "GET /content/redirect HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		if resp.StatusCode != 302 {
			t.Fatalf("status %d, want the manager's 302", resp.StatusCode)
		}
		for _, name := range []string{"Server", "Via", "X-AspNet-Version", "X-Powered-By", "Set-Cookie"} {
			if v := resp.Header.Values(name); len(v) != 0 {
				t.Errorf("%s: %q reached the client", name, v)
			}
		}
		if got := resp.Header.Values("Location"); len(got) != 1 || got[0] != "/secars/x" {
			t.Errorf("Location %q, want /secars/x", got)
		}
	})

	t.Run("manager 500 keeps its status and gets the fixed body", func(t *testing.T) {
		resp, body := rawExchange(t, addr, "GET /content/crash HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		if resp.StatusCode != 500 || body != "500 Internal Server Error\n" {
			t.Errorf("answer %d %q, want 500 with the fixed body", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			t.Errorf("Content-Type %q", ct)
		}
		if got := resp.Header.Values("Server"); len(got) != 0 {
			t.Errorf("Server %q reached the client", got)
		}
	})
}
