package response

import (
	"errors"
	"net/http"

	"github.com/legacygate/legacygate/internal/query"
)

// Refusal reasons of the handlers that judge query parameters, in their
// logs and metrics.
const (
	// ReasonDuplicateKey: a parameter (or header) a decision is taken on
	// is given more than once; the manager might read another value than
	// the one judged.
	ReasonDuplicateKey = "duplicate_key"
	// ReasonBadQuery: a malformed escape, or a parameter name another
	// reader may take for one decided on (see query.ErrAmbiguousKey).
	ReasonBadQuery = "bad_query"
)

// QueryReason is the refusal reason for an error of the query package.
func QueryReason(err error) string {
	if errors.Is(err, query.ErrDuplicate) {
		return ReasonDuplicateKey
	}
	return ReasonBadQuery
}

// QueryRefusalText is what a client refused for its query learns, by
// reason (ReasonDuplicateKey or ReasonBadQuery).
func QueryRefusalText(reason string) string {
	if reason == ReasonDuplicateKey {
		return "a query parameter is given more than once"
	}
	return "malformed query"
}

// RefuseQuery answers 400 with a one-line body for a query refusal.
func RefuseQuery(w http.ResponseWriter, reason string) error {
	return Refuse(w, http.StatusBadRequest, 0, "400 Bad Request: "+QueryRefusalText(reason)+"\n")
}
