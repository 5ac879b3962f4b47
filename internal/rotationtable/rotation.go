// Package rotationtable keeps each client's progress through a signing key
// rotation window, bounded in memory, and decides which key signs its
// payloads. Snapshots carry that progress between gateway instances.
package rotationtable

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
	"strings"
	"sync"
	"time"
)

// Key rotation, per client.
//
// During a rotation window every client is served settings that carry the
// next signing certificate. A client's payloads switch to the next key only
// once it has confirmed the new anchor: it fetched those settings, then sent
// ConfirmHeartbeats more heartbeats. RotationTable keeps that progress for a
// bounded number of clients and makes the key decision for each request.

// KeyChoice says which signing key signs a payload for one client, or that
// no key may sign it yet.
type KeyChoice uint8

// The two keys of a rotation, and the hold between them.
const (
	KeyCurrent KeyChoice = iota // the key the client trusted before the rotation
	KeyNext                     // the key whose certificate the rotation distributes
	// KeyHold: the client fetched the settings carrying the next
	// certificate and has not confirmed them. It trusts next if it applied
	// them and current if it did not, so neither signature is safe: the
	// payload is withheld ("come back later") until it confirms.
	KeyHold
)

func (k KeyChoice) String() string {
	switch k {
	case KeyNext:
		return "next"
	case KeyHold:
		return "hold"
	}
	return "current"
}

// Window is when a rotation distributes the next certificate: from Start
// (inclusive) to End (exclusive).
type Window struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// DefaultConfirmHeartbeats is the vendor procedure's "wait at least three
// heartbeat cycles".
const DefaultConfirmHeartbeats = 3

// RotationPolicy is the configuration a RotationTable decides by.
type RotationPolicy struct {
	Window Window
	// ConfirmHeartbeats heartbeats after the anchor fetch confirm a client.
	// Zero means DefaultConfirmHeartbeats.
	ConfirmHeartbeats uint32
	// Grace keeps unconfirmed clients on the current key after the window
	// ends: the vendor's "leave one manager with the old certificate for 90
	// days", per client.
	Grace time.Duration
}

// Validate names the wrong field.
func (p RotationPolicy) Validate() error {
	switch {
	case p.Window.Start.IsZero():
		return fmt.Errorf("%w: window start is not set", ErrRotationConfig)
	case p.Window.End.IsZero():
		return fmt.Errorf("%w: window end is not set", ErrRotationConfig)
	case !p.Window.End.After(p.Window.Start):
		return fmt.Errorf("%w: window end %s is not after its start %s", ErrRotationConfig,
			p.Window.End.Format(time.RFC3339), p.Window.Start.Format(time.RFC3339))
	case p.Grace < 0:
		return fmt.Errorf("%w: grace %s is negative", ErrRotationConfig, p.Grace)
	}
	return nil
}

// Errors of the rotation table.
var (
	ErrRotationConfig   = errors.New("invalid rotation configuration")
	ErrRotationSnapshot = errors.New("invalid rotation snapshot")
)

// ClientState is one client's progress.
type ClientState struct {
	FirstSeen     time.Time `json:"first_seen"`
	LastSeen      time.Time `json:"last_seen"`
	AnchorFetched time.Time `json:"anchor_fetched,omitzero"` // first fetch of the settings carrying the next certificate
	// HeartbeatsSince counts heartbeats after AnchorFetched (saturating).
	HeartbeatsSince uint32 `json:"heartbeats_since"`
	// SeenPlaintext: the client's latest heartbeat came over plain HTTP, so
	// it still has to be moved to HTTPS.
	SeenPlaintext bool `json:"seen_plaintext"`
}

// Progress is where a client stands in a rotation.
type Progress string

// Client progress, in the order a client moves through it.
const (
	ProgressUnseen        Progress = "unseen"         // tracked, but not seen since the window opened
	ProgressPending       Progress = "pending"        // seen in the window, has not fetched the new settings
	ProgressAnchorFetched Progress = "anchor_fetched" // fetched them, not enough heartbeats since
	ProgressConfirmed     Progress = "confirmed"      // signed with the next key from now on
)

// ClientKey is the fixed-size key a client id is tracked under.
type ClientKey [16]byte

// KeyOf hashes a client id. SHA-256 keeps a client from choosing an id that
// collides with another client's, which would hand it that client's progress.
func KeyOf(clientID string) ClientKey {
	sum := sha256.Sum256([]byte(clientID))
	var k ClientKey
	copy(k[:], sum[:])
	return k
}

func (k ClientKey) String() string { return hex.EncodeToString(k[:]) }

// labelSize bounds the part of a client id kept for the operator's
// straggler list.
const labelSize = 32

// Slot flags.
const (
	flagPlaintext uint8 = 1 << iota
	flagTruncated       // the client id was longer than the label
	knownFlags    = flagPlaintext | flagTruncated
)

// rotSlot is one client in 88 bytes. Times are Unix nanoseconds, 0 = never.
type rotSlot struct {
	key        ClientKey
	first      int64
	last       int64
	anchor     int64
	beats      uint32
	flags      uint8
	labelLen   uint8
	label      [labelSize]byte
	prev, next int32 // LRU links within the slot's class list; -1 = none
}

// Slot classes, in eviction order: a pending client loses only its first-seen
// time and plaintext flag; an anchor-fetched one must count its heartbeats
// again; a confirmed one would be signed with the current key again, which it
// may no longer accept, so it is evicted only once no decision depends on it.
const (
	classPending = iota
	classFetched
	classConfirmed
	numClasses
)

const chunkBits = 10 // 1,024 slots (88 KiB) per chunk: growth without doubling

type rotList struct{ head, tail int32 }

// RotationTable tracks clients' rotation progress in bounded memory. It is
// safe for concurrent use; every method takes the time, so the clock is the
// caller's (and tests').
type RotationTable struct {
	policy     RotationPolicy
	maxClients int

	mu      sync.RWMutex
	index   map[ClientKey]int32
	chunks  [][]rotSlot
	free    []int32 // slots of evicted clients
	used    int32   // slots handed out so far
	lists   [numClasses]rotList
	evicted uint64
	refused uint64
}

// NewRotationTable makes a table for the policy that tracks at most
// maxClients clients.
func NewRotationTable(p RotationPolicy, maxClients int) (*RotationTable, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if maxClients < 1 || maxClients > 1<<30 {
		return nil, fmt.Errorf("%w: max_clients %d is out of range (1 to 2^30)", ErrRotationConfig, maxClients)
	}
	if p.ConfirmHeartbeats == 0 {
		p.ConfirmHeartbeats = DefaultConfirmHeartbeats
	}
	t := &RotationTable{policy: p, maxClients: maxClients, index: make(map[ClientKey]int32)}
	for c := range t.lists {
		t.lists[c] = rotList{head: -1, tail: -1}
	}
	return t, nil
}

// Policy returns the table's policy, defaults filled in.
func (t *RotationTable) Policy() RotationPolicy { return t.policy }

// Decide picks the key that signs a payload for clientID at now: before the
// window, current; from its start until window end + grace, next for a
// confirmed client, a hold for a client that fetched the next certificate
// but has not confirmed it, and current for every other client; after that,
// next for everyone.
func (t *RotationTable) Decide(clientID string, now time.Time) KeyChoice {
	w := t.policy.Window
	if now.Before(w.Start) {
		return KeyCurrent
	}
	if !now.Before(w.End.Add(t.policy.Grace)) {
		return KeyNext
	}
	key := KeyOf(clientID)
	t.mu.RLock()
	defer t.mu.RUnlock()
	i, ok := t.index[key]
	if !ok {
		return KeyCurrent
	}
	switch t.classOf(t.slot(i)) {
	case classConfirmed:
		return KeyNext
	case classFetched:
		return KeyHold
	}
	return KeyCurrent
}

// Heartbeat records a heartbeat from clientID. It reports the client's state
// afterwards, and false if the table is full and the client is not tracked.
func (t *RotationTable) Heartbeat(clientID string, now time.Time, plaintext bool) (ClientState, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.touch(clientID, now)
	if !ok {
		return ClientState{}, false
	}
	s := t.slot(i)
	if s.anchor != 0 && now.UnixNano() > s.anchor && s.beats < ^uint32(0) {
		s.beats++
	}
	if plaintext {
		s.flags |= flagPlaintext
	} else {
		s.flags &^= flagPlaintext
	}
	t.reclass(i)
	return s.state(), true
}

// AnchorFetched records that clientID fetched the settings carrying the next
// certificate. Only the first fetch counts: fetching again does not restart
// the heartbeat count.
func (t *RotationTable) AnchorFetched(clientID string, now time.Time) (ClientState, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.touch(clientID, now)
	if !ok {
		return ClientState{}, false
	}
	s := t.slot(i)
	if s.anchor == 0 {
		s.anchor = nanos(now)
	}
	t.reclass(i)
	return s.state(), true
}

// Lookup returns a client's state.
func (t *RotationTable) Lookup(clientID string) (ClientState, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	i, ok := t.index[KeyOf(clientID)]
	if !ok {
		return ClientState{}, false
	}
	return t.slot(i).state(), true
}

// RotationCounts are the operator's figures.
type RotationCounts struct {
	Phase         string `json:"phase"` // before, open, grace or after
	Tracked       int    `json:"tracked"`
	MaxClients    int    `json:"max_clients"`
	Unseen        int    `json:"unseen"`
	Pending       int    `json:"pending"`
	AnchorFetched int    `json:"anchor_fetched"`
	Confirmed     int    `json:"confirmed"`
	Plaintext     int    `json:"plaintext"` // clients whose latest heartbeat was plain HTTP
	Evicted       uint64 `json:"evicted"`   // clients dropped to make room
	Refused       uint64 `json:"refused"`   // clients not tracked: the table was full of clients it must keep
}

// Phase names where now falls relative to the window and grace.
func (p RotationPolicy) Phase(now time.Time) string {
	switch {
	case now.Before(p.Window.Start):
		return "before"
	case now.Before(p.Window.End):
		return "open"
	case now.Before(p.Window.End.Add(p.Grace)):
		return "grace"
	}
	return "after"
}

// Counts tallies clients by progress.
func (t *RotationTable) Counts(now time.Time) RotationCounts {
	t.mu.RLock()
	defer t.mu.RUnlock()
	c := RotationCounts{Phase: t.policy.Phase(now), Tracked: len(t.index), MaxClients: t.maxClients, Evicted: t.evicted, Refused: t.refused}
	for _, i := range t.index {
		s := t.slot(i)
		switch t.progress(s) {
		case ProgressUnseen:
			c.Unseen++
		case ProgressPending:
			c.Pending++
		case ProgressAnchorFetched:
			c.AnchorFetched++
		case ProgressConfirmed:
			c.Confirmed++
		}
		if s.flags&flagPlaintext != 0 {
			c.Plaintext++
		}
	}
	return c
}

// Straggler is a client that has not confirmed the new anchor.
type Straggler struct {
	Key      string   `json:"key"`    // hex of the hashed client id
	Client   string   `json:"client"` // the client id, cut to 32 bytes ("…" marks a cut)
	Progress Progress `json:"progress"`
	ClientState
}

// MaxStragglerPage bounds one page of stragglers.
const MaxStragglerPage = 1000

// Stragglers lists unconfirmed clients, longest silent first, page by page
// (page counts from 1; size is capped at MaxStragglerPage). It also returns
// how many stragglers there are in all.
func (t *RotationTable) Stragglers(page, size int) ([]Straggler, int) {
	size = min(max(size, 1), MaxStragglerPage)
	page = max(page, 1)
	t.mu.RLock()
	idx := make([]int32, 0, len(t.index))
	for _, i := range t.index {
		if t.classOf(t.slot(i)) != classConfirmed {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(a, b int) bool {
		sa, sb := t.slot(idx[a]), t.slot(idx[b])
		if sa.last != sb.last {
			return sa.last < sb.last
		}
		return string(sa.key[:]) < string(sb.key[:])
	})
	total := len(idx)
	from := min((page-1)*size, total)
	to := min(from+size, total)
	out := make([]Straggler, 0, to-from)
	for _, i := range idx[from:to] {
		s := t.slot(i)
		out = append(out, Straggler{Key: s.key.String(), Client: s.client(), Progress: t.progress(s), ClientState: s.state()})
	}
	t.mu.RUnlock()
	return out, total
}

// touch finds or creates clientID's slot and marks it seen at now; t.mu is
// held for writing.
func (t *RotationTable) touch(clientID string, now time.Time) (int32, bool) {
	key := KeyOf(clientID)
	i, ok := t.index[key]
	if !ok {
		if i, ok = t.insert(key, now); !ok {
			return 0, false
		}
		t.slot(i).setLabel(clientID)
	}
	s := t.slot(i)
	n := nanos(now)
	if s.first == 0 || n < s.first {
		s.first = n
	}
	if n > s.last {
		s.last = n
	}
	t.unlink(i)
	t.pushFront(i)
	return i, true
}

// insert allocates a slot for key, evicting if the table is full.
func (t *RotationTable) insert(key ClientKey, now time.Time) (int32, bool) {
	if len(t.index) >= t.maxClients && !t.evictOne(now) {
		t.refused++
		return 0, false
	}
	var i int32
	if n := len(t.free); n > 0 {
		i = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		i = t.used
		t.used++
		if int(i>>chunkBits) == len(t.chunks) {
			t.chunks = append(t.chunks, make([]rotSlot, 1<<chunkBits))
		}
	}
	*t.slot(i) = rotSlot{key: key, prev: -1, next: -1}
	t.index[key] = i
	t.pushFront(i)
	return i, true
}

// evictOne drops the least recently seen client of the cheapest class to
// lose. Confirmed clients go only once the window and grace are over, when
// everyone is signed with the next key anyway.
func (t *RotationTable) evictOne(now time.Time) bool {
	classes := []int{classPending, classFetched}
	if !now.Before(t.policy.Window.End.Add(t.policy.Grace)) {
		classes = append(classes, classConfirmed)
	}
	for _, c := range classes {
		if i := t.lists[c].tail; i >= 0 {
			t.unlink(i)
			delete(t.index, t.slot(i).key)
			t.free = append(t.free, i)
			t.evicted++
			return true
		}
	}
	return false
}

func (t *RotationTable) slot(i int32) *rotSlot {
	return &t.chunks[i>>chunkBits][i&(1<<chunkBits-1)]
}

func (t *RotationTable) classOf(s *rotSlot) int {
	switch {
	case s.anchor != 0 && s.beats >= t.policy.ConfirmHeartbeats:
		return classConfirmed
	case s.anchor != 0:
		return classFetched
	}
	return classPending
}

func (t *RotationTable) progress(s *rotSlot) Progress {
	switch t.classOf(s) {
	case classConfirmed:
		return ProgressConfirmed
	case classFetched:
		return ProgressAnchorFetched
	}
	if s.last < nanos(t.policy.Window.Start) {
		return ProgressUnseen
	}
	return ProgressPending
}

// reclass moves slot i to the front of the list of its (possibly new) class.
func (t *RotationTable) reclass(i int32) {
	t.unlink(i)
	t.pushFront(i)
}

// The class of a linked slot is recomputed from its fields, so unlink finds
// the list by the links themselves: a slot with no prev is its list's head.
func (t *RotationTable) unlink(i int32) {
	s := t.slot(i)
	if s.prev < 0 && s.next < 0 {
		for c := range t.lists {
			if t.lists[c].head == i {
				t.lists[c] = rotList{head: -1, tail: -1}
			}
		}
		return
	}
	if s.prev >= 0 {
		t.slot(s.prev).next = s.next
	} else {
		for c := range t.lists {
			if t.lists[c].head == i {
				t.lists[c].head = s.next
			}
		}
	}
	if s.next >= 0 {
		t.slot(s.next).prev = s.prev
	} else {
		for c := range t.lists {
			if t.lists[c].tail == i {
				t.lists[c].tail = s.prev
			}
		}
	}
	s.prev, s.next = -1, -1
}

func (t *RotationTable) pushFront(i int32) {
	s := t.slot(i)
	l := &t.lists[t.classOf(s)]
	s.prev, s.next = -1, l.head
	if l.head >= 0 {
		t.slot(l.head).prev = i
	}
	l.head = i
	if l.tail < 0 {
		l.tail = i
	}
}

func (s *rotSlot) setLabel(clientID string) {
	n := copy(s.label[:], clientID)
	s.labelLen = uint8(n)
	if len(clientID) > n {
		s.flags |= flagTruncated
	}
}

func (s *rotSlot) client() string {
	c := strings.ToValidUTF8(string(s.label[:s.labelLen]), "\uFFFD")
	if s.flags&flagTruncated != 0 {
		c += "…"
	}
	return c
}

func (s *rotSlot) state() ClientState {
	return ClientState{
		FirstSeen:       fromNanos(s.first),
		LastSeen:        fromNanos(s.last),
		AnchorFetched:   fromNanos(s.anchor),
		HeartbeatsSince: s.beats,
		SeenPlaintext:   s.flags&flagPlaintext != 0,
	}
}

// nanos stores a time; times before 1970 are clamped to 1 ns so that 0 keeps
// meaning "never".
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return max(t.UnixNano(), 1)
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// Persistence.
//
// A snapshot is binary, version 1, big-endian:
//
//	header  "LGRT" | version (1) | 3 zero bytes | window start, end (int64 ns) | record count (uint32)
//	records count × 78 bytes: key (16) | first, last, anchor (int64 ns) |
//	        heartbeats (uint32) | flags (1) | label length (1) | label (32, zero-padded)
//	trailer CRC-32C of everything before it
//
// Fixed-size records make the length check exact; the checksum catches a
// torn or corrupted write; the window in the header keeps progress from one
// rotation from being counted in the next.

const (
	snapshotMagic   = "LGRT"
	snapshotVersion = 1
	headerSize      = 4 + 1 + 3 + 8 + 8 + 4
	recordSize      = 16 + 8 + 8 + 8 + 4 + 1 + 1 + labelSize
	trailerSize     = 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// RotationSnapshot is a decoded snapshot: one instance's table, or several
// instances' merged.
type RotationSnapshot struct {
	Window Window
	slots  []rotSlot
}

// Len is the number of client records.
func (s *RotationSnapshot) Len() int { return len(s.slots) }

// Snapshot copies the table.
func (t *RotationTable) Snapshot() *RotationSnapshot {
	t.mu.RLock()
	defer t.mu.RUnlock()
	snap := &RotationSnapshot{Window: t.policy.Window, slots: make([]rotSlot, 0, len(t.index))}
	for _, i := range t.index {
		snap.slots = append(snap.slots, *t.slot(i))
	}
	// Key order makes the bytes depend only on the table's content.
	sort.Slice(snap.slots, func(a, b int) bool { return string(snap.slots[a].key[:]) < string(snap.slots[b].key[:]) })
	return snap
}

// MarshalBinary encodes the snapshot.
func (s *RotationSnapshot) MarshalBinary() ([]byte, error) {
	buf := make([]byte, headerSize, headerSize+len(s.slots)*recordSize+trailerSize)
	copy(buf, snapshotMagic)
	buf[4] = snapshotVersion
	binary.BigEndian.PutUint64(buf[8:], uint64(nanos(s.Window.Start)))
	binary.BigEndian.PutUint64(buf[16:], uint64(nanos(s.Window.End)))
	binary.BigEndian.PutUint32(buf[24:], uint32(len(s.slots)))
	for i := range s.slots {
		buf = appendRecord(buf, &s.slots[i])
	}
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli)), nil
}

func appendRecord(buf []byte, s *rotSlot) []byte {
	buf = append(buf, s.key[:]...)
	buf = binary.BigEndian.AppendUint64(buf, uint64(s.first))
	buf = binary.BigEndian.AppendUint64(buf, uint64(s.last))
	buf = binary.BigEndian.AppendUint64(buf, uint64(s.anchor))
	buf = binary.BigEndian.AppendUint32(buf, s.beats)
	buf = append(buf, s.flags, s.labelLen)
	return append(buf, s.label[:]...)
}

// DecodeRotationSnapshot parses a snapshot, refusing anything that is not
// exactly what MarshalBinary writes.
func DecodeRotationSnapshot(data []byte) (*RotationSnapshot, error) {
	if len(data) < headerSize+trailerSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than a header", ErrRotationSnapshot, len(data))
	}
	if string(data[:4]) != snapshotMagic {
		return nil, fmt.Errorf("%w: does not start with %q", ErrRotationSnapshot, snapshotMagic)
	}
	if data[4] != snapshotVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads version %d", ErrRotationSnapshot, data[4], snapshotVersion)
	}
	if data[5]|data[6]|data[7] != 0 {
		return nil, fmt.Errorf("%w: reserved header bytes are not zero", ErrRotationSnapshot)
	}
	count := binary.BigEndian.Uint32(data[24:])
	body := len(data) - headerSize - trailerSize
	if body%recordSize != 0 || uint64(body/recordSize) != uint64(count) {
		return nil, fmt.Errorf("%w: header says %d records, but %d bytes follow it (truncated or padded)", ErrRotationSnapshot, count, body)
	}
	end := len(data) - trailerSize
	if want, got := binary.BigEndian.Uint32(data[end:]), crc32.Checksum(data[:end], castagnoli); want != got {
		return nil, fmt.Errorf("%w: checksum %08x, content sums to %08x (corrupted)", ErrRotationSnapshot, want, got)
	}
	start, stop := int64(binary.BigEndian.Uint64(data[8:])), int64(binary.BigEndian.Uint64(data[16:]))
	if start < 0 || stop < 0 {
		return nil, fmt.Errorf("%w: negative window time", ErrRotationSnapshot)
	}
	snap := &RotationSnapshot{Window: Window{Start: fromNanos(start), End: fromNanos(stop)}, slots: make([]rotSlot, count)}
	for i := range snap.slots {
		if err := decodeRecord(data[headerSize+i*recordSize:], &snap.slots[i]); err != nil {
			return nil, fmt.Errorf("%w: record %d: %v", ErrRotationSnapshot, i, err)
		}
	}
	return snap, nil
}

func decodeRecord(b []byte, s *rotSlot) error {
	copy(s.key[:], b[:16])
	s.first = int64(binary.BigEndian.Uint64(b[16:]))
	s.last = int64(binary.BigEndian.Uint64(b[24:]))
	s.anchor = int64(binary.BigEndian.Uint64(b[32:]))
	s.beats = binary.BigEndian.Uint32(b[40:])
	s.flags, s.labelLen = b[44], b[45]
	copy(s.label[:], b[46:46+labelSize])
	s.prev, s.next = -1, -1
	switch {
	case s.first <= 0 || s.last < s.first:
		return fmt.Errorf("first seen %d and last seen %d are not an interval", s.first, s.last)
	case s.anchor < 0:
		return fmt.Errorf("negative anchor fetch time %d", s.anchor)
	case s.anchor == 0 && s.beats != 0:
		return fmt.Errorf("%d heartbeats counted without an anchor fetch", s.beats)
	case s.flags&^knownFlags != 0:
		return fmt.Errorf("unknown flags %#x", s.flags)
	case int(s.labelLen) > labelSize:
		return fmt.Errorf("label length %d exceeds %d", s.labelLen, labelSize)
	}
	for _, c := range s.label[s.labelLen:] {
		if c != 0 {
			return errors.New("label padding is not zero")
		}
	}
	return nil
}

// MergeStats say what a Merge changed.
type MergeStats struct {
	Added   int `json:"added"`
	Updated int `json:"updated"`
	Refused int `json:"refused"` // the table was full of clients it must keep
}

// Merge joins a snapshot into the table, so that instances sharing storage
// agree: each merges the others' snapshots. Per client, the join is
// earliest first seen, latest last seen, earliest anchor fetch, most
// heartbeats since (max, not sum: snapshots overlap, and summing would count
// a heartbeat once per instance that saw the snapshot holding it), and the
// plaintext flag of the latest sighting. The join is commutative, associative
// and idempotent, so merge order and repeated merges do not matter, and
// progress only grows: a client confirmed through one instance is confirmed
// on every instance that merges its snapshot.
//
// A snapshot of another window is refused: a previous rotation's progress
// must not confirm anyone in this one.
func (t *RotationTable) Merge(snap *RotationSnapshot, now time.Time) (MergeStats, error) {
	w := t.policy.Window
	if !snap.Window.Start.Equal(w.Start) || !snap.Window.End.Equal(w.End) {
		return MergeStats{}, fmt.Errorf("%w: snapshot is for window %s–%s, this table's is %s–%s", ErrRotationSnapshot,
			snap.Window.Start.Format(time.RFC3339), snap.Window.End.Format(time.RFC3339),
			w.Start.Format(time.RFC3339), w.End.Format(time.RFC3339))
	}
	var st MergeStats
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range snap.slots {
		in := &snap.slots[k]
		i, ok := t.index[in.key]
		if !ok {
			if i, ok = t.insert(in.key, now); !ok {
				st.Refused++
				continue
			}
			st.Added++
		} else {
			st.Updated++
		}
		joinSlot(t.slot(i), in)
		t.reclass(i)
	}
	return st, nil
}

func joinSlot(s, in *rotSlot) {
	if s.first == 0 || (in.first != 0 && in.first < s.first) {
		s.first = in.first
	}
	switch {
	case in.last > s.last:
		s.flags = s.flags&^flagPlaintext | in.flags&flagPlaintext
		s.last = in.last
	case in.last == s.last:
		s.flags |= in.flags & flagPlaintext
	}
	if s.anchor == 0 || (in.anchor != 0 && in.anchor < s.anchor) {
		s.anchor = in.anchor
	}
	s.beats = max(s.beats, in.beats)
	if s.labelLen == 0 && in.labelLen != 0 {
		s.label, s.labelLen = in.label, in.labelLen
		s.flags |= in.flags & flagTruncated
	}
}
