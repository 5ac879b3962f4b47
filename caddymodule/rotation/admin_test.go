package rotation

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func getRotation(t *testing.T, target string) (*httptest.ResponseRecorder, error) {
	t.Helper()
	w := httptest.NewRecorder()
	err := serveRotationStatus(w, httptest.NewRequest("GET", target, nil))
	return w, err
}

func TestAdminRotationReportsWindowCountsAndStragglers(t *testing.T) {
	clock := &testClock{now: inWindow}
	a := startApp(t, appBlock(t, t.TempDir(), "a"), clock)
	confirm(a, clock, "H-confirmed", 3)
	for i := range 5 {
		clock.Set(clock.Now().Add(time.Minute))
		a.ObserveHeartbeat(clientRequest("GET", "/secars/secars.dll?action=index&hostid=H"+strconv.Itoa(i)), i < 2)
	}
	w, err := getRotation(t, "/legacygate/rotation?page=2&size=2")
	if err != nil {
		t.Fatal(err)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var doc map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, w.Body)
	}
	for _, key := range []string{"now", "rotation", "window", "grace", "grace_ends", "confirm_heartbeats", "keys", "counts", "confirmed_percent", "plaintext_clients", "stragglers"} {
		if _, ok := doc[key]; !ok {
			t.Errorf("key %q missing from %s", key, w.Body)
		}
	}
	var st RotationStatus
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if !st.Window.Start.Equal(windowStart) || !st.Window.End.Equal(windowEnd) {
		t.Errorf("window %v", st.Window)
	}
	if st.Counts.Phase != "open" || st.Counts.Tracked != 6 || st.Counts.Confirmed != 1 || st.Counts.Pending != 5 {
		t.Errorf("counts %+v, want phase open, 6 tracked, 1 confirmed, 5 pending", st.Counts)
	}
	if st.PlaintextClients == nil || *st.PlaintextClients != 2 {
		t.Errorf("plaintext_clients %v, want 2", st.PlaintextClients)
	}
	if want := 100.0 / 6; st.ConfirmedPercent < want-0.001 || st.ConfirmedPercent > want+0.001 {
		t.Errorf("confirmed_percent %v, want %v", st.ConfirmedPercent, want)
	}
	if st.Keys["current"] != a.current.KeyID() || st.Keys["next"] != a.next.KeyID() {
		t.Errorf("keys %v", st.Keys)
	}
	sp := st.Stragglers
	if sp.Page != 2 || sp.Size != 2 || sp.Total != 5 || len(sp.Clients) != 2 {
		t.Fatalf("stragglers page %d size %d total %d with %d clients; want page 2 of size 2, 5 in all", sp.Page, sp.Size, sp.Total, len(sp.Clients))
	}
	// Longest silent first: H0, H1 on page 1, then H2, H3.
	if sp.Clients[0].Client != "H2" || sp.Clients[1].Client != "H3" {
		t.Errorf("page 2 holds %s, %s; want H2, H3", sp.Clients[0].Client, sp.Clients[1].Client)
	}
}

func TestAdminRotationRefusesBadRequests(t *testing.T) {
	startApp(t, appBlock(t, t.TempDir(), "a"), &testClock{now: inWindow})
	tests := []struct {
		name   string
		method string
		target string
		status int
	}{
		{"page zero", "GET", "/legacygate/rotation?page=0", http.StatusBadRequest},
		{"page not a number", "GET", "/legacygate/rotation?page=x", http.StatusBadRequest},
		{"size over the cap", "GET", "/legacygate/rotation?size=1001", http.StatusBadRequest},
		{"page twice", "GET", "/legacygate/rotation?page=1&Page=2", http.StatusBadRequest},
		{"size malformed", "GET", "/legacygate/rotation?size=%zz", http.StatusBadRequest},
		{"POST", "POST", "/legacygate/rotation", http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := serveRotationStatus(httptest.NewRecorder(), httptest.NewRequest(tt.method, tt.target, nil))
			var apiErr caddy.APIError
			if !errors.As(err, &apiErr) || apiErr.HTTPStatus != tt.status {
				t.Fatalf("error %v, want an API error with status %d", err, tt.status)
			}
		})
	}
}

func TestAdminRotationWithoutRotationSaysSo(t *testing.T) {
	k := testRotationKeys(t)
	startApp(t, "legacygate {\n signing_key current "+k.currentKey+" "+k.currentCert+"\n storage file_system "+t.TempDir()+"\n}", &testClock{now: inWindow})
	w, err := getRotation(t, "/legacygate/rotation")
	if err != nil {
		t.Fatal(err)
	}
	var st RotationStatus
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if !st.App || st.Rotation || st.Counts != nil || st.PlaintextClients != nil || st.Keys["current"] != k.current.KeyID() {
		t.Fatalf("status without a rotation: %s", w.Body)
	}
	if len(st.SigningKeys) != 1 || st.SigningKeys[0] != keyInfo("current", k.current) {
		t.Fatalf("signing_keys %+v, want the current key only", st.SigningKeys)
	}
	c := k.current.Cert()
	if got := st.SigningKeys[0]; got.Subject != c.Subject.String() || !strings.HasPrefix(got.Pin, "sha256/") || len(got.Fingerprint) != 64 {
		t.Errorf("current key %+v lacks the certificate's subject, pin or fingerprint", got)
	}
}

func TestAdminRotationWithoutTheAppReportsHandlerKeys(t *testing.T) {
	k := testRotationKeys(t)
	if activeApp.Load() != nil {
		t.Fatal("an app is still running from another test")
	}
	unregister := RegisterHandlerKey(k.current)
	unregisterAgain := RegisterHandlerKey(k.current) // a second handler, or the next config during a reload
	unregisterNext := RegisterHandlerKey(k.next)
	t.Cleanup(func() { unregister(); unregisterAgain(); unregisterNext() })

	status := func() RotationStatus {
		t.Helper()
		w, err := getRotation(t, "/legacygate/rotation")
		if err != nil {
			t.Fatalf("without the app: %v, want 200", err)
		}
		var st RotationStatus
		if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := status()
	if st.App || st.Rotation || st.PlaintextClients != nil || len(st.SigningKeys) != 2 {
		t.Fatalf("status without the app: %+v, want no app, no rotation, two distinct keys", st)
	}
	for _, ki := range st.SigningKeys {
		if ki.Role != "policy_guard" || (ki.KeyID != k.current.KeyID() && ki.KeyID != k.next.KeyID()) {
			t.Errorf("key %+v", ki)
		}
	}
	unregister()
	unregister() // idempotent: must not drop the other handler's registration
	unregisterNext()
	if st := status(); len(st.SigningKeys) != 1 || st.SigningKeys[0].KeyID != k.current.KeyID() {
		t.Fatalf("after two of three cleanups: %+v, want the current key still listed", st.SigningKeys)
	}
	unregisterAgain()
	if st := status(); len(st.SigningKeys) != 0 {
		t.Fatalf("after every cleanup: %+v, want no keys", st.SigningKeys)
	}
}
