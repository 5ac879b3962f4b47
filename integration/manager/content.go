package manager

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// CountContent counts definitions downloads (GET or HEAD of /content/…).
const CountContent = "content"

// ContentPrefix is where a SEPM serves virus definitions:
// /content/{GUID}/{revision}/full.zip and deltas beside it.
const ContentPrefix = "/content/"

// DefaultContentSize is the size of every definitions file when
// Config.ContentSize is 0.
const DefaultContentSize = 4 << 20

// contentBlock is the period of a definitions body: the bytes repeat
// every contentBlock, derived from the path, so each URL has its own
// stable content and no body is ever held in memory.
const contentBlock = 64 << 10

// contentStart is the Last-Modified of every definitions file.
var contentStart = time.Now().UTC().Truncate(time.Second)

// content serves GET and HEAD of /content/<GUID>/<revision>/<file> for
// the revisions it publishes, Config.ContentSize bytes (Range and conditional requests as
// IIS would, through http.ServeContent). Other shapes get 404.
func (s *sepm) content(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, ContentPrefix), "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" || !s.publishes(parts[0], parts[1]) {
		s.m.count(CountNotFound)
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.badFormat(w)
		return
	}
	s.m.count(CountContent)
	body := newContentBody(r.URL.Path, s.contentSize())
	w.Header().Set("Content-Type", "application/x-zip-compressed")
	w.Header().Set("Etag", `"`+hex.EncodeToString(body.block[:8])+`"`)
	http.ServeContent(&countingContentWriter{ResponseWriter: w, n: &s.m.contentBytes}, r, "", contentStart, body)
}

// publishes reports whether guid/revision is served: any on the readable
// wire (tests pick their own), only the revision the index names on the
// real wire, as a real manager has only what it published.
func (s *sepm) publishes(guid, revision string) bool {
	return s.defs == nil || (guid == s.defs.guid && revision == s.defs.revision)
}

func (s *sepm) contentSize() int64 {
	if s.m.cfg.ContentSize > 0 {
		return s.m.cfg.ContentSize
	}
	return DefaultContentSize
}

// ContentBytes is how many body bytes of /content this manager has sent.
func (m *Manager) ContentBytes() int64 { return m.contentBytes.Load() }

// contentBody is a definitions file: block repeated up to size.
type contentBody struct {
	block []byte
	size  int64
	off   int64
}

func newContentBody(path string, size int64) *contentBody {
	block := make([]byte, 0, contentBlock)
	seed := sha256.Sum256([]byte(path))
	for i := 0; len(block) < contentBlock; i++ {
		sum := sha256.Sum256(append(seed[:], byte(i), byte(i>>8)))
		block = append(block, sum[:]...)
	}
	return &contentBody{block: block[:contentBlock], size: size}
}

func (b *contentBody) Read(p []byte) (int, error) {
	if b.off >= b.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), b.size-b.off)]
	n := 0
	for n < len(p) {
		n += copy(p[n:], b.block[(b.off+int64(n))%contentBlock:])
	}
	b.off += int64(n)
	return n, nil
}

func (b *contentBody) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += b.off
	case io.SeekEnd:
		offset += b.size
	}
	if offset < 0 {
		return 0, errors.New("content: seek before the start")
	}
	b.off = offset
	return offset, nil
}

// ContentBody returns the bytes the emulator serves at path for a file of
// size bytes, for tests that check what clients received.
func ContentBody(path string, size int64) []byte {
	var buf bytes.Buffer
	io.Copy(&buf, newContentBody(path, size))
	return buf.Bytes()
}

// countingContentWriter adds the body bytes written to n.
type countingContentWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countingContentWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}
