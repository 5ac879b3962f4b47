package response

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/legacygate/legacygate/internal/query"
)

func TestRefuseQueryNamesTheReasonAndAnswers400(t *testing.T) {
	tests := []struct {
		err        error
		wantReason string
		wantBody   string
	}{
		{fmt.Errorf("client_id: %w", query.ErrDuplicate), ReasonDuplicateKey, "400 Bad Request: a query parameter is given more than once\n"},
		{fmt.Errorf("hostid: %w", query.ErrEscape), ReasonBadQuery, "400 Bad Request: malformed query\n"},
		{query.ErrAmbiguousKey, ReasonBadQuery, "400 Bad Request: malformed query\n"},
	}
	for _, tt := range tests {
		reason := QueryReason(tt.err)
		if reason != tt.wantReason {
			t.Fatalf("%v: reason %q, want %q", tt.err, reason, tt.wantReason)
		}
		w := httptest.NewRecorder()
		if err := RefuseQuery(w, reason); err != nil {
			t.Fatal(err)
		}
		if w.Code != http.StatusBadRequest || w.Body.String() != tt.wantBody || w.Header().Get("Cache-Control") != "no-store" {
			t.Fatalf("%v: %d %v %q", tt.err, w.Code, w.Header(), w.Body.String())
		}
	}
}
