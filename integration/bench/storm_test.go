package bench

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestStormVerdictNamesTheFirstGoalMissed(t *testing.T) {
	cfg := StormConfig{GlobalRate: 200, RejectP99: 5 * time.Millisecond}
	good := StormTarget{Answered: 3000, Allowed: 4000, Rejected: 56000, ManagerPeak: 201, RejectedP99Ms: 1.5}
	tests := []struct {
		name   string
		change func(*StormTarget)
		want   string // a substring of the verdict; "" means every goal met
	}{
		{"every goal met", func(*StormTarget) {}, ""},
		{"manager within the 1 % allowance", func(s *StormTarget) { s.ManagerPeak = 202 }, ""},
		{"failed heartbeats", func(s *StormTarget) { s.Errors = 3 }, "3 heartbeats failed"},
		{"answers fell behind", func(s *StormTarget) { s.Answered = 2900 }, "answered 2900/s of 3000/s"},
		{"the generator fell behind", func(s *StormTarget) { s.LateShare = 0.02 }, "3000/s was not offered"},
		{"the manager above global_rate + 1 %", func(s *StormTarget) { s.ManagerPeak = 203 }, "203 heartbeats in one second"},
		{"nothing rejected", func(s *StormTarget) { s.Rejected = 0 }, "nothing was rejected"},
		{"rejections without Retry-After", func(s *StormTarget) { s.BadRetry = 1 }, "without a Retry-After"},
		{"slow rejections", func(s *StormTarget) { s.RejectedP99Ms = 5 }, "rejection p99 5.00 ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := good
			tt.change(&st)
			got := cfg.verdict(st, 3000)
			if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
				t.Errorf("verdict = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStormSummaryCountsAnswersByKind(t *testing.T) {
	ms := time.Millisecond
	answers := []stormAnswer{
		{status: 200, latency: 40 * ms},
		{status: 503, reason: "global", retryOK: true, latency: 1 * ms},
		{status: 503, reason: "per_client", retryOK: true, latency: 2 * ms, late: 20 * ms},
		{status: 503, reason: "global", retryOK: false, latency: 3 * ms},
		{status: 0, latency: 10 * time.Second},
	}
	var st StormTarget
	st.summarize(answers, 2*time.Second)
	if st.Allowed != 1 || st.Rejected != 3 || st.Errors != 1 || st.BadRetry != 1 {
		t.Errorf("allowed %d rejected %d errors %d bad retry %d, want 1 3 1 1", st.Allowed, st.Rejected, st.Errors, st.BadRetry)
	}
	if st.Answered != 2 || st.LateShare != 0.2 {
		t.Errorf("answered %.1f/s late %.2f, want 2/s and 0.2", st.Answered, st.LateShare)
	}
	if st.Reasons["global"] != 2 || st.Reasons["per_client"] != 1 || st.ReasonP99Ms["global"] != 3 {
		t.Errorf("by reason %v, p99 %v", st.Reasons, st.ReasonP99Ms)
	}
	if st.RejectedMaxMs != 3 || st.AllowedP99Ms != 40 {
		t.Errorf("rejected max %.1f ms, allowed p99 %.1f ms", st.RejectedMaxMs, st.AllowedP99Ms)
	}
}

func TestBusiestSecondCountsWithinOneSecond(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	a := arrivals{
		at:    []time.Time{at(0), at(500), at(1000), at(1500), at(2000), at(2600)},
		count: []int64{0, 100, 150, 400, 420, 430},
	}
	if got := a.busiestSecond(); got != 300 {
		t.Errorf("busiest second = %d, want 300 (100 → 400 between 0.5 s and 1.5 s)", got)
	}
	if got := a.total(); got != 430 {
		t.Errorf("total = %d, want 430", got)
	}
}

func TestBusyReasonReadsTheRejectionBody(t *testing.T) {
	for body, want := range map[string]string{
		`<Index><Busy RetryAfter="3" Reason="global"/></Index>`: "global",
		`<Index><Busy Reason="per_client"/></Index>`:            "per_client",
		``: "none",
		`<Index><Busy Reason="made-up"/></Index>`: "other",
	} {
		if got := busyReason([]byte(body)); got != want {
			t.Errorf("busyReason(%q) = %q, want %q", body, got, want)
		}
	}
}

func TestReadHeadReadsWhatTheStormNeeds(t *testing.T) {
	tests := []struct {
		name, answer string
		want         head
		wantErr      string
	}{
		{"allowed", "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 3\r\n\r\nabc", head{status: 200, length: 3}, ""},
		{"rejected", "HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", head{status: 503, length: 0, retryAfter: 2, close: true}, ""},
		{"not HTTP", "SSH-2.0-OpenSSH\r\n\r\n", head{}, "not HTTP/1.x"},
		{"bad status", "HTTP/1.1 2x0 OK\r\n\r\n", head{}, "no status code"},
		{"negative status", "HTTP/1.1 -10 OK\r\n\r\n", head{}, "no status code"},
		{"negative length", "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", head{}, "without a Content-Length"},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", head{}, "Content-Length"},
		{"no length", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", head{}, "without a Content-Length"},
		{"cut short", "HTTP/1.1 200 OK\r\nContent-Le", head{}, "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readHead(bufio.NewReader(strings.NewReader(tt.answer)))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("readHead = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func FuzzReadHead(f *testing.F) {
	f.Add([]byte("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 5\r\n\r\nhello"))
	f.Add([]byte("HTTP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHead(bufio.NewReader(bytes.NewReader(data)))
		if err == nil && (h.length < 0 || h.status < 0 || h.status > 999) {
			t.Fatalf("accepted %q as %+v", data, h)
		}
	})
}
