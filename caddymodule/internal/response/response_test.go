package response

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type handlerFunc func(http.ResponseWriter, *http.Request) error

func (f handlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

func buffer2xx(status int) bool {
	return !(status >= 200 && status < 300 && status != http.StatusNoContent && status != http.StatusResetContent)
}

func TestRecorderHoldsUpToTheLimitAndStreamsWhatThePolicySays(t *testing.T) {
	tests := []struct {
		name       string
		stream     func(int) bool
		status     int
		body       string
		limit      int64
		wantStream bool
		wantLarge  bool
	}{
		{"held 200", buffer2xx, 200, "<a/>", 16, false, false},
		{"streamed 404", buffer2xx, 404, "nope", 16, true, false},
		{"over the limit", buffer2xx, 200, strings.Repeat("x", 17), 16, false, true},
		{"never streams", nil, 404, "nope", 16, false, false},
		{"101 streams", func(s int) bool { return s == http.StatusSwitchingProtocols }, 101, "", 16, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := httptest.NewRecorder()
			rec := NewRecorder(client, tt.limit, tt.stream)
			defer rec.Release()
			rec.Header().Set("X-Manager", "1")
			rec.WriteHeader(tt.status)
			_, err := rec.Write([]byte(tt.body))
			if rec.Streamed() != tt.wantStream || rec.TooLarge() != tt.wantLarge {
				t.Fatalf("streamed %v too large %v, want %v %v", rec.Streamed(), rec.TooLarge(), tt.wantStream, tt.wantLarge)
			}
			if tt.wantLarge != errors.Is(err, ErrTooLarge) {
				t.Fatalf("write error %v", err)
			}
			if got := client.Header().Get("X-Manager") != ""; got != tt.wantStream {
				t.Fatalf("client saw the manager's header: %v, want %v", got, tt.wantStream)
			}
			if !tt.wantStream && !tt.wantLarge && string(rec.Body()) != tt.body {
				t.Fatalf("held %q", rec.Body())
			}
		})
	}
}

func TestRecorderRefusesADeclaredLengthOverTheLimitAndDropsInformational(t *testing.T) {
	rec := NewRecorder(nil, 10, nil)
	defer rec.Release()
	rec.WriteHeader(http.StatusContinue)
	rec.WriteHeader(http.StatusSwitchingProtocols)
	if rec.WroteHeader() {
		t.Fatal("an informational status was recorded")
	}
	rec.Header().Set("Content-Length", "11")
	rec.WriteHeader(200)
	if !rec.TooLarge() || rec.Declared() != 11 {
		t.Fatalf("too large %v declared %d", rec.TooLarge(), rec.Declared())
	}
}

func TestForwardCountsTheLengthAndLeavesOutTrailers(t *testing.T) {
	for _, tt := range []struct {
		method    string
		headAsGet bool
		wantCL    string
		wantBody  string
	}{
		{http.MethodGet, false, "5", "hello"},
		{http.MethodHead, true, "5", ""},
	} {
		rec := NewRecorder(nil, 64, nil)
		rec.Header().Set("Trailer", "X-Sum")
		rec.Header().Set("X-Sum", "1")
		rec.Header().Set("Content-Length", "999")
		rec.Header().Del("Content-Length")
		_, _ = rec.Write([]byte("hello"))
		w := httptest.NewRecorder()
		if err := rec.Forward(w, httptest.NewRequest(tt.method, "/", nil), tt.headAsGet); err != nil {
			t.Fatal(err)
		}
		rec.Release()
		if w.Header().Get("Content-Length") != tt.wantCL || w.Body.String() != tt.wantBody || w.Header().Get("X-Sum") != "" || w.Header().Get("Trailer") != "" {
			t.Fatalf("%s: headers %v body %q", tt.method, w.Header(), w.Body.String())
		}
	}
}

func TestRefuseWritesAShortUncachedBody(t *testing.T) {
	w := httptest.NewRecorder()
	if err := Refuse(w, http.StatusServiceUnavailable, 60*time.Second, "try later\n"); err != nil {
		t.Fatal(err)
	}
	h := w.Header()
	if w.Code != 503 || w.Body.String() != "try later\n" || h.Get("Content-Length") != "10" ||
		h.Get("Cache-Control") != "no-store" || h.Get("Retry-After") != "60" || !strings.HasPrefix(h.Get("Content-Type"), "text/plain") {
		t.Fatalf("%d %v %q", w.Code, h, w.Body.String())
	}
	w = httptest.NewRecorder()
	_ = Refuse(w, http.StatusBadGateway, 0, "refused\n")
	if _, ok := w.Header()["Retry-After"]; ok || w.Code != 502 {
		t.Fatalf("%d %v", w.Code, w.Header())
	}
}

func TestServeNextRecoversOnlyTheAbort(t *testing.T) {
	aborted, err := ServeNext(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), handlerFunc(func(http.ResponseWriter, *http.Request) error {
		panic(http.ErrAbortHandler)
	}))
	if !aborted || err != nil {
		t.Fatalf("aborted %v err %v", aborted, err)
	}
	defer func() {
		if v := recover(); v != "other" {
			t.Fatalf("recovered %v, want the other panic to go on", v)
		}
	}()
	_, _ = ServeNext(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), handlerFunc(func(http.ResponseWriter, *http.Request) error {
		panic("other")
	}))
}

func TestRecorderNeitherHoldsNorStreamsARepeatedSingletonHeader(t *testing.T) {
	for _, status := range []int{200, 404, http.StatusSwitchingProtocols} {
		client := httptest.NewRecorder()
		rec := NewRecorder(client, 64, func(s int) bool { return s != 200 })
		rec.Header().Add("Content-Encoding", "identity")
		rec.Header()["content-encoding"] = []string{"gzip"}
		rec.WriteHeader(status)
		_, err := rec.Write([]byte("<Profile/>"))
		if HeaderName(rec.Ambiguous()) != "Content-Encoding" || !errors.Is(err, ErrAmbiguous) {
			t.Fatalf("%d: ambiguous %v, write error %v", status, rec.Ambiguous(), err)
		}
		if rec.Streamed() || rec.Len() != 0 || client.Body.Len() != 0 || len(client.Header()) != 0 {
			t.Fatalf("%d: streamed %v, held %d bytes, client got %v %q", status, rec.Streamed(), rec.Len(), client.Header(), client.Body)
		}
		rec.Release()
	}
}
