package response

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Refuse answers status with a short plain-text body, never cached, and a
// Retry-After in whole seconds when retryAfter is positive. Headers the
// caller set on w before (Upgrade, …) go with it. The body is all a client
// learns; the reason belongs in the log.
func Refuse(w http.ResponseWriter, status int, retryAfter time.Duration, body string) error {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
	}
	w.WriteHeader(status)
	_, err := io.WriteString(w, body)
	return err
}

// ServeNext runs the rest of the chain into w. reverse_proxy reports a body
// that failed mid-copy by panicking with http.ErrAbortHandler; that is
// recovered here and reported as aborted. Any other panic goes on.
func ServeNext(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) (aborted bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler { //nolint:errorlint // the sentinel is panicked, not wrapped
				panic(v)
			}
			aborted = true
		}
	}()
	return false, next.ServeHTTP(w, r)
}

// CopyHeader copies the manager's headers, leaving out trailers: a held
// body is sent with a Content-Length and no trailer section.
func CopyHeader(dst, src http.Header) {
	for k, v := range src {
		if k == "Trailer" || strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		dst[k] = v
	}
	for _, names := range src["Trailer"] {
		for name := range strings.SplitSeq(names, ",") {
			delete(dst, http.CanonicalHeaderKey(strings.TrimSpace(name)))
		}
	}
}

// CopyHeaderMap copies every header of src into dst.
func CopyHeaderMap(dst, src http.Header) {
	for k, v := range src {
		dst[k] = v
	}
}

// Incomplete is the error of a response body that ended early, err the
// chain's own error if it gave one.
func Incomplete(err error) error {
	if err == nil {
		return errors.New("the upstream response body ended early")
	}
	return fmt.Errorf("the upstream response body ended early: %w", err)
}

// Refusal is a failure with the stable reason token that goes into the log
// line and the metric label.
type Refusal struct {
	Reason string
	Err    error
}

func (e *Refusal) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *Refusal) Unwrap() error { return e.Err }
