package rotation

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"

	"github.com/legacygate/legacygate/internal/query"
	"github.com/legacygate/legacygate/internal/rotationtable"
)

// Bounds of a keep file: it is read at every provision and held in memory.
const (
	maxKeepFileSize = 1 << 20
	maxKeepClients  = 10_000
	maxKeepIDLen    = 128
)

// ParseKeepList reads a keep file: one client id per line; blank lines and
// lines starting with # are skipped; surrounding spaces and tabs are
// trimmed. An id is 1 to 128 visible ASCII characters (no spaces) and is
// upper-cased, as the app's client ids are. name is the file's name, for
// errors, which give the line.
func ParseKeepList(name string, r io.Reader) ([]string, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxKeepFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(data) > maxKeepFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxKeepFileSize)
	}
	var ids []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxKeepFileSize)
	for line := 1; sc.Scan(); line++ {
		text := bytes.Trim(sc.Bytes(), " \t\r")
		if len(text) == 0 || text[0] == '#' {
			continue
		}
		if len(text) > maxKeepIDLen {
			return nil, fmt.Errorf("%s line %d: client id longer than %d bytes", name, line, maxKeepIDLen)
		}
		for _, c := range text {
			if c <= ' ' || c > '~' {
				return nil, fmt.Errorf("%s line %d: %q: a client id is visible ASCII without spaces (one per line)", name, line, text)
			}
		}
		id := query.Upper(string(text))
		if seen[id] {
			continue
		}
		if len(ids) == maxKeepClients {
			return nil, fmt.Errorf("%s line %d: more than %d client ids", name, line, maxKeepClients)
		}
		seen[id] = true
		ids = append(ids, id)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return ids, nil
}

// readKeepFile reads and parses the keep file at path.
func readKeepFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseKeepList(path, f)
}

// keepLists are the client ids the plaintext_bridge handlers of one
// configuration keep on plain HTTP; each handler adds its list at Provision
// and removes it at Cleanup. Each list is a set: it is looked up on every
// plain request outside the window and every settings document.
type keepLists struct {
	mu    sync.RWMutex
	lists map[*keepSet]struct{}
}

type keepSet struct{ ids map[string]struct{} }

// add registers ids; the returned function removes them again.
func (k *keepLists) add(ids []string) (remove func()) {
	set := &keepSet{ids: make(map[string]struct{}, len(ids))}
	for _, id := range ids {
		set.ids[id] = struct{}{}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.lists == nil {
		k.lists = map[*keepSet]struct{}{}
	}
	k.lists[set] = struct{}{}
	return func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		delete(k.lists, set)
	}
}

// contains reports whether id (upper-cased) is kept.
func (k *keepLists) contains(id string) bool {
	if k == nil || id == "" {
		return false
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	for set := range k.lists {
		if _, ok := set.ids[id]; ok {
			return true
		}
	}
	return false
}

// all are the kept ids, sorted, each once.
func (k *keepLists) all() []string {
	if k == nil {
		return nil
	}
	k.mu.RLock()
	var out []string
	for set := range k.lists {
		for id := range set.ids {
			out = append(out, id)
		}
	}
	k.mu.RUnlock()
	slices.Sort(out)
	return slices.Compact(out)
}

// KeepClients keeps ids (upper-cased client ids, as ParseKeepList returns
// them) on plain HTTP until the returned function is called:
// plaintext_bridge calls it from Provision with its keep file and the
// function from Cleanup.
func (a *App) KeepClients(ids []string) (remove func()) {
	if a.keep == nil {
		a.keep = new(keepLists)
	}
	return a.keep.add(ids)
}

// Kept reports whether r's client is on a plaintext_bridge keep list: its
// agent speaks no TLS 1.2, so it stays on plain HTTP and its settings keep
// their plain-HTTP server entries. A request whose client id is ambiguous
// is not kept.
func (a *App) Kept(r *http.Request) bool {
	id, err := a.clientID(r)
	return err == nil && a.keep.contains(id)
}

// keptClients are the kept clients with their progress, for the status.
func (a *App) keptClients() []KeptClient {
	ids := a.keep.all()
	if len(ids) == 0 {
		return nil
	}
	out := make([]KeptClient, 0, len(ids))
	for _, id := range ids {
		c := KeptClient{Client: id}
		if a.table != nil {
			if s, ok := a.table.Lookup(id); ok {
				c.Seen, c.LastSeen, c.Progress = true, s.LastSeen, progressOf(a.table.Policy(), s)
				c.Plaintext = s.SeenPlaintext
			}
		}
		out = append(out, c)
	}
	return out
}

// progressOf is rotationtable's progress of a looked-up client.
func progressOf(p rotationtable.RotationPolicy, s rotationtable.ClientState) rotationtable.Progress {
	switch {
	case !s.AnchorFetched.IsZero() && s.HeartbeatsSince >= p.ConfirmHeartbeats:
		return rotationtable.ProgressConfirmed
	case !s.AnchorFetched.IsZero():
		return rotationtable.ProgressAnchorFetched
	case s.LastSeen.Before(p.Window.Start):
		return rotationtable.ProgressUnseen
	}
	return rotationtable.ProgressPending
}
