package manager

import (
	"net/http"
	"time"
)

// Fault makes the client endpoints misbehave, for tests of what a gateway
// does with a slow or failing manager. The zero Fault is a healthy manager.
// Admin endpoints are never affected.
type Fault struct {
	// Delay holds each request this long before it is handled (or until
	// the client gives up).
	Delay time.Duration
	// Status, if non-zero, replaces each response with this status and an
	// empty body, after the request was handled and counted.
	Status int
	// Abort drops the connection without any response, after the request
	// was read, handled and counted: a manager failing mid-request.
	Abort bool
}

// SetFault sets the fault for requests that arrive from now on.
func (m *Manager) SetFault(f Fault) { m.fault.Store(&f) }

// withFault applies the current Fault around the client endpoints.
func (m *Manager) withFault(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := m.fault.Load()
		if f == nil || *f == (Fault{}) {
			h.ServeHTTP(w, r)
			return
		}
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		if f.Status == 0 && !f.Abort {
			h.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(&discardWriter{header: http.Header{}}, r)
		if f.Abort {
			panic(http.ErrAbortHandler) // net/http closes the connection, logs nothing
		}
		w.WriteHeader(f.Status)
	})
}

// discardWriter lets a handler run to completion without answering.
type discardWriter struct{ header http.Header }

func (d *discardWriter) Header() http.Header         { return d.header }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}
