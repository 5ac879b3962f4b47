// Package response holds what legacygate's handlers share for the responses
// they hold back or refuse: a bounded buffering recorder, the refusal
// writer, the recovery of reverse_proxy's aborted bodies, and header copies.
package response

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"sync"
)

// Recorder holds a response of the rest of the chain until the handler has
// judged it: headers and at most limit bytes of body. A status for which
// the stream policy says so is not held but streamed straight to the
// client, headers copied when the status is written. A response of any
// status that repeats one of SingletonHeaders is neither held nor streamed:
// it is ambiguous (see Ambiguous), and the handler refuses it.
//
// caddyhttp.NewResponseRecorder does not fit: it shares the client's header
// map (the manager's headers would reach the client of a refused response)
// and has no size cap (a manager could make the gateway buffer any amount).
type Recorder struct {
	w           http.ResponseWriter
	header      http.Header
	buf         *bytes.Buffer
	limit       int64
	stream      func(status int) bool
	declared    int64 // the Content-Length over limit, when that made it tooLarge
	status      int
	wroteHeader bool
	streaming   bool
	tooLarge    bool
	ambiguous   error // a repeated singleton header: nothing is forwarded
}

var (
	// ErrTooLarge is what Write returns once the body is over the limit.
	ErrTooLarge = errors.New("response body over max_size")
	// ErrAmbiguous is what Write returns for an ambiguous response.
	ErrAmbiguous = errors.New("response refused for a repeated singleton header")
)

// Buffers over this capacity are dropped instead of pooled, so one large
// payload does not pin its memory for the life of the process.
const maxPooledBuffer = 1 << 20

var pool = sync.Pool{New: func() any {
	return &Recorder{header: make(http.Header), buf: new(bytes.Buffer)}
}}

// NewRecorder returns a pooled recorder in front of w (nil when nothing is
// ever streamed) that holds at most limit bytes of body. stream says which
// statuses go straight to the client; nil streams none. Informational
// statuses other than 101 are never forwarded, and 101 only when streamed.
// Release it when its bytes are no longer used.
func NewRecorder(w http.ResponseWriter, limit int64, stream func(status int) bool) *Recorder {
	rec := pool.Get().(*Recorder)
	rec.w, rec.limit, rec.stream = w, limit, stream
	return rec
}

// Release returns the recorder and its buffer to the pool.
func (rec *Recorder) Release() {
	clear(rec.header)
	if rec.buf.Cap() > maxPooledBuffer {
		rec.buf = new(bytes.Buffer)
	}
	rec.buf.Reset()
	*rec = Recorder{header: rec.header, buf: rec.buf}
	pool.Put(rec)
}

// Header is the recorder's own map until a streamed status is written; the
// client's map after that, so trailers of a streamed response still work.
func (rec *Recorder) Header() http.Header {
	if rec.streaming {
		return rec.w.Header()
	}
	return rec.header
}

// WriteHeader decides, by status, between holding and streaming.
func (rec *Recorder) WriteHeader(status int) {
	if rec.wroteHeader {
		return
	}
	if status >= 100 && status < 200 && (status != http.StatusSwitchingProtocols || !rec.streams(status)) {
		return
	}
	rec.status, rec.wroteHeader = status, true
	if rec.ambiguous = RepeatedSingleton(rec.header); rec.ambiguous != nil {
		return
	}
	if rec.streams(status) {
		rec.streaming = true
		CopyHeaderMap(rec.w.Header(), rec.header)
		rec.w.WriteHeader(status)
		return
	}
	rec.reserve()
}

func (rec *Recorder) streams(status int) bool {
	return rec.stream != nil && rec.stream(status)
}

// reserve sizes the buffer from Content-Length, or marks the response too
// large before a byte of it is read.
func (rec *Recorder) reserve() {
	cl, err := strconv.ParseInt(rec.header.Get("Content-Length"), 10, 64)
	switch {
	case err != nil || cl < 0:
	case cl > rec.limit:
		rec.declared, rec.tooLarge = cl, true
	default:
		rec.buf.Grow(int(cl))
	}
}

func (rec *Recorder) Write(p []byte) (int, error) {
	rec.WriteHeader(http.StatusOK)
	if rec.ambiguous != nil {
		return 0, ErrAmbiguous
	}
	if rec.streaming {
		return rec.w.Write(p)
	}
	if rec.tooLarge || int64(rec.buf.Len())+int64(len(p)) > rec.limit {
		rec.tooLarge = true
		return 0, ErrTooLarge
	}
	return rec.buf.Write(p)
}

// FlushError flushes a streamed response; a held one is not flushed.
func (rec *Recorder) FlushError() error {
	if !rec.streaming {
		return nil
	}
	return http.NewResponseController(rec.w).Flush()
}

// Unwrap gives http.ResponseController the client's writer (deadlines,
// hijacking a 101 response).
func (rec *Recorder) Unwrap() http.ResponseWriter { return rec.w }

// Status is the status written, 0 when none was.
func (rec *Recorder) Status() int { return rec.status }

// FinalStatus is the status written, or 200 when the chain wrote a body
// or nothing without one.
func (rec *Recorder) FinalStatus() int {
	if rec.status == 0 {
		return http.StatusOK
	}
	return rec.status
}

// WroteHeader reports whether a status was written.
func (rec *Recorder) WroteHeader() bool { return rec.wroteHeader }

// Streamed reports whether the response went straight to the client.
func (rec *Recorder) Streamed() bool { return rec.streaming }

// TooLarge reports whether the body, or its Content-Length, was over the limit.
func (rec *Recorder) TooLarge() bool { return rec.tooLarge }

// Ambiguous is the *HeaderError of a response that repeats one of
// SingletonHeaders, nil for any other. Check it before anything else: such
// a response was neither held nor streamed, whatever its status.
func (rec *Recorder) Ambiguous() error { return rec.ambiguous }

// Declared is the Content-Length that made the response too large, 0 when
// its bytes did.
func (rec *Recorder) Declared() int64 { return rec.declared }

// Held is the held response's header map (Header returns the client's once
// streaming).
func (rec *Recorder) Held() http.Header { return rec.header }

// Body is the held body; it belongs to the recorder until Release.
func (rec *Recorder) Body() []byte { return rec.buf.Bytes() }

// Len is the number of body bytes held.
func (rec *Recorder) Len() int { return rec.buf.Len() }

// Forward writes the held response unchanged: the manager's headers
// (trailers left out), its status and its bytes, with a Content-Length
// counted from them. headAsGet says that r, a HEAD, was sent upstream as a
// GET: the held body's length is then the Content-Length, and the body is
// not written.
func (rec *Recorder) Forward(w http.ResponseWriter, r *http.Request, headAsGet bool) error {
	h := w.Header()
	CopyHeader(h, rec.header)
	status := rec.FinalStatus()
	head := r.Method == http.MethodHead
	if (headAsGet || !head) && status != http.StatusNoContent && status != http.StatusNotModified {
		h.Set("Content-Length", strconv.Itoa(rec.buf.Len()))
	}
	w.WriteHeader(status)
	if (headAsGet && head) || rec.buf.Len() == 0 {
		return nil
	}
	_, err := w.Write(rec.buf.Bytes())
	return err
}
