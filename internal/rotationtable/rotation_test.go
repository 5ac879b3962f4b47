package rotationtable

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	rotStart = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	rotEnd   = time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC)
	rotGrace = 90 * 24 * time.Hour
)

func rotPolicy() RotationPolicy {
	return RotationPolicy{Window: Window{Start: rotStart, End: rotEnd}, ConfirmHeartbeats: 3, Grace: rotGrace}
}

func newRotTable(t testing.TB, maxClients int) *RotationTable {
	t.Helper()
	tab, err := NewRotationTable(rotPolicy(), maxClients)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// rotEvent is one thing a client does, at an offset from the window start.
type rotEvent struct {
	kind      string // "hb", "hb-plain" or "anchor"
	client    string
	at        time.Duration
	wantTrack bool
}

func hb(client string, at time.Duration) rotEvent { return rotEvent{"hb", client, at, true} }
func anchor(client string, at time.Duration) rotEvent {
	return rotEvent{"anchor", client, at, true}
}

func play(t testing.TB, tab *RotationTable, events []rotEvent) {
	t.Helper()
	for _, e := range events {
		now := rotStart.Add(e.at)
		var tracked bool
		switch e.kind {
		case "hb":
			_, tracked = tab.Heartbeat(e.client, now, false)
		case "hb-plain":
			_, tracked = tab.Heartbeat(e.client, now, true)
		case "anchor":
			_, tracked = tab.AnchorFetched(e.client, now)
		default:
			t.Fatalf("unknown event %q", e.kind)
		}
		if tracked != e.wantTrack {
			t.Fatalf("%s %s at %s: tracked = %v, want %v", e.kind, e.client, e.at, tracked, e.wantTrack)
		}
	}
}

const day = 24 * time.Hour

func TestRotationDecideFollowsWindowConfirmationAndGrace(t *testing.T) {
	confirmA := []rotEvent{anchor("a", time.Hour), hb("a", 2*time.Hour), hb("a", 3*time.Hour), hb("a", 4*time.Hour)}
	cases := []struct {
		name   string
		events []rotEvent
		client string // the client decided for; "a" when empty
		at     time.Duration
		want   KeyChoice
	}{
		{"before the window even a confirmed client gets current", confirmA, "", -time.Second, KeyCurrent},
		{"inside the window an unknown client gets current", nil, "", day, KeyCurrent},
		{"heartbeats without the anchor do not confirm", []rotEvent{hb("a", 1), hb("a", 2), hb("a", 3), hb("a", 4)}, "", day, KeyCurrent},
		{"a pending client inside the window gets current", []rotEvent{hb("a", time.Hour)}, "", day, KeyCurrent},
		{"the anchor fetch alone holds the client", confirmA[:1], "", day, KeyHold},
		{"anchor and two heartbeats are not enough: held", confirmA[:3], "", day, KeyHold},
		{"anchor and three heartbeats confirm", confirmA, "", day, KeyNext},
		{"a heartbeat at the anchor's instant does not count", []rotEvent{anchor("a", time.Hour), hb("a", time.Hour), hb("a", 2*time.Hour), hb("a", 3*time.Hour)}, "", day, KeyHold},
		{"heartbeats before the anchor do not count", []rotEvent{hb("a", time.Minute), hb("a", 2*time.Minute), anchor("a", time.Hour), hb("a", 2*time.Hour)}, "", day, KeyHold},
		{"fetching again does not restart the count", []rotEvent{anchor("a", time.Hour), hb("a", 2*time.Hour), anchor("a", 150*time.Minute), hb("a", 3*time.Hour), hb("a", 4*time.Hour)}, "", day, KeyNext},
		{"another client's confirmation is not mine", confirmA, "b", day, KeyCurrent},
		{"in grace a client that never fetched the anchor keeps current", []rotEvent{hb("a", time.Hour)}, "", rotEnd.Sub(rotStart) + day, KeyCurrent},
		{"in grace an anchor-fetched, unconfirmed client is held", confirmA[:2], "", rotEnd.Sub(rotStart) + day, KeyHold},
		{"the last instant of grace still holds", confirmA[:2], "", rotEnd.Sub(rotStart) + rotGrace - time.Nanosecond, KeyHold},
		{"after grace an anchor-fetched, unconfirmed client gets next", confirmA[:2], "", rotEnd.Sub(rotStart) + rotGrace, KeyNext},
		{"in grace a confirmed client gets next", confirmA, "", rotEnd.Sub(rotStart) + day, KeyNext},
		{"after grace everyone gets next", nil, "", rotEnd.Sub(rotStart) + rotGrace, KeyNext},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tab := newRotTable(t, 100)
			play(t, tab, tc.events)
			client := tc.client
			if client == "" {
				client = "a"
			}
			if got := tab.Decide(client, rotStart.Add(tc.at)); got != tc.want {
				t.Errorf("Decide = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestRotationCountsClientsByProgress(t *testing.T) {
	tab := newRotTable(t, 100)
	play(t, tab, []rotEvent{
		hb("offline", -day),          // seen before the window only: unseen
		hb("pending", time.Hour),     // seen in the window, no anchor
		anchor("fetched", time.Hour), // fetched, one heartbeat
		hb("fetched", 2*time.Hour),
		anchor("done", time.Hour), hb("done", 2*time.Hour), hb("done", 3*time.Hour), hb("done", 4*time.Hour),
		{"hb-plain", "plain", time.Hour, true},
		{"hb-plain", "moved", time.Hour, true}, hb("moved", 2*time.Hour), // back on HTTPS: not counted
	})
	got := tab.Counts(rotStart.Add(day))
	want := RotationCounts{Phase: "open", Tracked: 6, MaxClients: 100, Unseen: 1, Pending: 3, AnchorFetched: 1, Confirmed: 1, Plaintext: 1}
	if got != want {
		t.Errorf("Counts = %+v\nwant     %+v", got, want)
	}
	phases := []struct {
		at   time.Time
		want string
	}{
		{rotStart.Add(-time.Nanosecond), "before"},
		{rotStart, "open"},
		{rotEnd, "grace"},
		{rotEnd.Add(rotGrace), "after"},
	}
	for _, p := range phases {
		if got := tab.Counts(p.at).Phase; got != p.want {
			t.Errorf("phase at %s = %q, want %q", p.at, got, p.want)
		}
	}
}

func TestRotationEvictsPendingThenFetchedAndKeepsConfirmed(t *testing.T) {
	confirm := func(c string, at time.Duration) []rotEvent {
		return []rotEvent{anchor(c, at), hb(c, at+1), hb(c, at+2), hb(c, at+3)}
	}
	cases := []struct {
		name        string
		events      []rotEvent
		newcomerAt  time.Duration
		wantTracked bool
		wantGone    string // client evicted to make room
		wantEvicted uint64
		wantRefused uint64
	}{
		{
			name:       "least recently seen pending client goes first",
			events:     append([]rotEvent{hb("p-old", 1), hb("p-new", 2)}, anchor("f", 3)),
			newcomerAt: time.Hour, wantTracked: true, wantGone: "p-old", wantEvicted: 1,
		},
		{
			name:       "anchor-fetched clients go before confirmed ones",
			events:     append(append([]rotEvent{anchor("f-old", 1), anchor("f-new", 2)}, confirm("c", 10)...), hb("f-old", 20)),
			newcomerAt: time.Hour, wantTracked: true, wantGone: "f-new", wantEvicted: 1,
		},
		{
			name:       "a table full of confirmed clients refuses newcomers during the window",
			events:     append(append(confirm("c1", 1), confirm("c2", 10)...), confirm("c3", 20)...),
			newcomerAt: time.Hour, wantTracked: false, wantRefused: 1,
		},
		{
			name:       "a table full of confirmed clients refuses newcomers during grace",
			events:     append(append(confirm("c1", 1), confirm("c2", 10)...), confirm("c3", 20)...),
			newcomerAt: rotEnd.Sub(rotStart) + day, wantTracked: false, wantRefused: 1,
		},
		{
			name:       "after grace confirmed clients may go",
			events:     append(append(confirm("c1", 1), confirm("c2", 10)...), confirm("c3", 20)...),
			newcomerAt: rotEnd.Sub(rotStart) + rotGrace, wantTracked: true, wantGone: "c1", wantEvicted: 1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tab := newRotTable(t, 3)
			play(t, tab, tc.events)
			_, tracked := tab.Heartbeat("newcomer", rotStart.Add(tc.newcomerAt), false)
			if tracked != tc.wantTracked {
				t.Fatalf("newcomer tracked = %v, want %v", tracked, tc.wantTracked)
			}
			if tc.wantGone != "" {
				if _, ok := tab.Lookup(tc.wantGone); ok {
					t.Errorf("%s is still tracked", tc.wantGone)
				}
			}
			c := tab.Counts(rotStart.Add(tc.newcomerAt))
			if c.Tracked != 3 || c.Evicted != tc.wantEvicted || c.Refused != tc.wantRefused {
				t.Errorf("tracked %d evicted %d refused %d, want 3, %d, %d", c.Tracked, c.Evicted, c.Refused, tc.wantEvicted, tc.wantRefused)
			}
		})
	}
}

func TestRotationStragglersPageLongestSilentFirst(t *testing.T) {
	tab := newRotTable(t, 100)
	long := strings.Repeat("x", 40)
	play(t, tab, []rotEvent{
		hb("c3", 3*time.Hour), hb("c1", time.Hour), hb(long, 2*time.Hour),
		anchor("done", 1), hb("done", 2), hb("done", 3), hb("done", 4),
		anchor("c4", 4*time.Hour),
	})
	cases := []struct {
		page, size int
		want       []string
	}{
		{1, 2, []string{"c1", strings.Repeat("x", 32) + "…"}},
		{2, 2, []string{"c3", "c4"}},
		{3, 2, nil},
		{0, 10, []string{"c1", strings.Repeat("x", 32) + "…", "c3", "c4"}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("page %d size %d", tc.page, tc.size), func(t *testing.T) {
			got, total := tab.Stragglers(tc.page, tc.size)
			if total != 4 {
				t.Errorf("total = %d, want 4", total)
			}
			var names []string
			for _, s := range got {
				names = append(names, s.Client)
			}
			if fmt.Sprint(names) != fmt.Sprint(tc.want) {
				t.Errorf("stragglers = %q, want %q", names, tc.want)
			}
		})
	}
	got, _ := tab.Stragglers(2, 2)
	if got[1].Progress != ProgressAnchorFetched || got[1].Key != KeyOf("c4").String() {
		t.Errorf("c4 = %+v, want anchor_fetched under its hashed key", got[1])
	}
}

func TestRotationSnapshotRoundTripRestoresEveryClient(t *testing.T) {
	tab := newRotTable(t, 100)
	play(t, tab, []rotEvent{
		hb("a", -day), anchor("a", time.Hour), hb("a", 2*time.Hour),
		{"hb-plain", "b", time.Hour, true},
		anchor("c", 1), hb("c", 2), hb("c", 3), hb("c", 4),
	})
	data, err := tab.Snapshot().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := tab.Snapshot().MarshalBinary()
	if !bytes.Equal(data, again) {
		t.Error("two snapshots of the same table differ")
	}
	snap, err := DecodeRotationSnapshot(data)
	if err != nil {
		t.Fatal(err)
	}
	restored := newRotTable(t, 100)
	st, err := restored.Merge(snap, rotStart.Add(day))
	if err != nil {
		t.Fatal(err)
	}
	if st.Added != 3 {
		t.Errorf("Merge added %d, want 3", st.Added)
	}
	for _, c := range []string{"a", "b", "c"} {
		want, _ := tab.Lookup(c)
		got, ok := restored.Lookup(c)
		if !ok || got != want {
			t.Errorf("%s restored as %+v, want %+v", c, got, want)
		}
		if tab.Decide(c, rotStart.Add(day)) != restored.Decide(c, rotStart.Add(day)) {
			t.Errorf("%s: the restored table decides differently", c)
		}
	}
	if restored.Counts(rotStart.Add(day)) != tab.Counts(rotStart.Add(day)) {
		t.Errorf("counts differ after restore")
	}
}

// reseal recomputes a snapshot's checksum after a test edits it.
func reseal(b []byte) []byte {
	end := len(b) - trailerSize
	binary.BigEndian.PutUint32(b[end:], crc32.Checksum(b[:end], castagnoli))
	return b
}

func TestDecodeRotationSnapshotRejectsCorruptInput(t *testing.T) {
	tab := newRotTable(t, 10)
	play(t, tab, []rotEvent{anchor("a", time.Hour), hb("a", 2*time.Hour)})
	good, err := tab.Snapshot().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	rec := headerSize // offset of the first record
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		data []byte
		msg  string
	}{
		{"empty", nil, "shorter than a header"},
		{"wrong magic", edit(func(b []byte) []byte { b[0] = 'X'; return b }), "does not start"},
		{"future version", edit(func(b []byte) []byte { b[4] = 2; return reseal(b) }), "version 2"},
		{"reserved bytes", edit(func(b []byte) []byte { b[6] = 1; return reseal(b) }), "reserved"},
		{"truncated", good[:len(good)-10], "truncated"},
		{"padded", append(append([]byte(nil), good...), 0), "truncated or padded"},
		{"count lies", edit(func(b []byte) []byte { b[27] = 2; return reseal(b) }), "header says 2 records"},
		{"bit flip", edit(func(b []byte) []byte { b[rec+20] ^= 1; return b }), "checksum"},
		{"last before first", edit(func(b []byte) []byte { binary.BigEndian.PutUint64(b[rec+24:], 1); return reseal(b) }), "record 0"},
		{"heartbeats without anchor", edit(func(b []byte) []byte { clear(b[rec+32 : rec+40]); return reseal(b) }), "without an anchor"},
		{"unknown flags", edit(func(b []byte) []byte { b[rec+44] = 0x80; return reseal(b) }), "unknown flags"},
		{"label too long", edit(func(b []byte) []byte { b[rec+45] = 33; return reseal(b) }), "label length"},
		{"label padding", edit(func(b []byte) []byte { b[rec+46+labelSize-1] = 'z'; return reseal(b) }), "padding"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeRotationSnapshot(tc.data)
			if !errors.Is(err, ErrRotationSnapshot) {
				t.Fatalf("err = %v, want ErrRotationSnapshot", err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
		})
	}
}

func TestRotationMergeSharesConfirmationAcrossInstances(t *testing.T) {
	a, b := newRotTable(t, 100), newRotTable(t, 100)
	// The client fetched through B, then heartbeats reached A.
	play(t, b, []rotEvent{hb("x", time.Hour), anchor("x", time.Hour+time.Minute)})
	play(t, a, []rotEvent{hb("x", 2*time.Hour), hb("x", 3*time.Hour), {"hb-plain", "x", 4 * time.Hour, true}})
	now := rotStart.Add(day)
	// A has not heard of the anchor fetch; B holds x until it confirms.
	if ga, gb := a.Decide("x", now), b.Decide("x", now); ga != KeyCurrent || gb != KeyHold {
		t.Fatalf("before merging A decides %s, B %s for x; want current and hold: neither instance alone may confirm x", ga, gb)
	}
	exchange := func() {
		t.Helper()
		sa, sb := a.Snapshot(), b.Snapshot()
		if _, err := a.Merge(sb, now); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Merge(sa, now); err != nil {
			t.Fatal(err)
		}
	}
	exchange()
	// A counted its heartbeats without knowing of the anchor: the merged
	// state has the anchor but A's count is 0, so x is not yet confirmed.
	play(t, a, []rotEvent{hb("x", 5*time.Hour), hb("x", 6*time.Hour), hb("x", 7*time.Hour)})
	exchange()
	for name, tab := range map[string]*RotationTable{"A": a, "B": b} {
		if got := tab.Decide("x", now); got != KeyNext {
			t.Errorf("instance %s decides %s for x, want next", name, got)
		}
	}
	sa, _ := a.Lookup("x")
	sb, _ := b.Lookup("x")
	if sa != sb {
		t.Errorf("instances disagree: A %+v, B %+v", sa, sb)
	}
	if sa.HeartbeatsSince != 3 || !sa.AnchorFetched.Equal(rotStart.Add(time.Hour+time.Minute)) || sa.SeenPlaintext {
		t.Errorf("merged state %+v: want 3 heartbeats since B's anchor, last seen on HTTPS", sa)
	}
	// Merging the same snapshots again changes nothing (max, not sum).
	exchange()
	if again, _ := a.Lookup("x"); again != sa {
		t.Errorf("a repeated merge changed x: %+v, was %+v", again, sa)
	}
}

func TestRotationMergeRefusesAnotherWindow(t *testing.T) {
	tab := newRotTable(t, 10)
	other := rotPolicy()
	other.Window.End = other.Window.End.Add(day)
	prev, err := NewRotationTable(other, 10)
	if err != nil {
		t.Fatal(err)
	}
	play(t, prev, []rotEvent{anchor("x", 1), hb("x", 2), hb("x", 3), hb("x", 4)})
	if _, err := tab.Merge(prev.Snapshot(), rotStart.Add(day)); !errors.Is(err, ErrRotationSnapshot) {
		t.Fatalf("err = %v, want ErrRotationSnapshot", err)
	}
	if _, ok := tab.Lookup("x"); ok {
		t.Error("a refused merge added a client")
	}
}

func TestRotationPolicyValidateNamesTheField(t *testing.T) {
	cases := []struct {
		name string
		edit func(p *RotationPolicy)
		max  int
		msg  string
	}{
		{"no start", func(p *RotationPolicy) { p.Window.Start = time.Time{} }, 10, "window start"},
		{"no end", func(p *RotationPolicy) { p.Window.End = time.Time{} }, 10, "window end"},
		{"inverted", func(p *RotationPolicy) { p.Window.Start, p.Window.End = p.Window.End, p.Window.Start }, 10, "not after its start"},
		{"empty window", func(p *RotationPolicy) { p.Window.End = p.Window.Start }, 10, "not after its start"},
		{"negative grace", func(p *RotationPolicy) { p.Grace = -time.Hour }, 10, "grace"},
		{"no room", func(p *RotationPolicy) {}, 0, "max_clients"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := rotPolicy()
			tc.edit(&p)
			_, err := NewRotationTable(p, tc.max)
			if !errors.Is(err, ErrRotationConfig) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %v, want ErrRotationConfig naming %q", err, tc.msg)
			}
		})
	}
	p := rotPolicy()
	p.ConfirmHeartbeats = 0
	tab, err := NewRotationTable(p, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := tab.Policy().ConfirmHeartbeats; got != DefaultConfirmHeartbeats {
		t.Errorf("default confirm heartbeats = %d, want %d", got, DefaultConfirmHeartbeats)
	}
}

func TestRotationTableIsSafeForConcurrentUse(t *testing.T) {
	tab := newRotTable(t, 50)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				c := fmt.Sprintf("c%d", (g*500+i)%80)
				now := rotStart.Add(time.Duration(i) * time.Second)
				tab.Heartbeat(c, now, i%2 == 0)
				if i%7 == 0 {
					tab.AnchorFetched(c, now)
				}
				tab.Decide(c, now)
				if i%100 == 0 {
					tab.Counts(now)
					tab.Stragglers(1, 10)
					if _, err := tab.Merge(tab.Snapshot(), now); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	if c := tab.Counts(rotStart); c.Tracked > 50 {
		t.Errorf("tracked %d clients, bound is 50", c.Tracked)
	}
}

const fleetSize = 100_000

func fillFleet(t testing.TB, tab *RotationTable) {
	t.Helper()
	for i := range fleetSize {
		c := fmt.Sprintf("%032X", i)
		now := rotStart.Add(time.Duration(i) * time.Millisecond)
		tab.Heartbeat(c, now, i%5 == 0)
		if i%2 == 0 {
			tab.AnchorFetched(c, now.Add(time.Second))
			tab.Heartbeat(c, now.Add(2*time.Second), false)
		}
	}
}

func TestRotationTableUsesAtMost200BytesPerClient(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a table with 100,000 clients")
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tab := newRotTable(t, fleetSize)
	fillFleet(t, tab)
	runtime.GC()
	runtime.ReadMemStats(&after)
	perClient := float64(after.HeapInuse-before.HeapInuse) / fleetSize
	t.Logf("%.1f bytes per tracked client (HeapInuse delta / %d)", perClient, fleetSize)
	if perClient > 200 {
		t.Errorf("%.1f bytes per client, budget is 200", perClient)
	}
	if got := tab.Counts(rotStart).Tracked; got != fleetSize {
		t.Fatalf("tracked %d, want %d", got, fleetSize)
	}
	runtime.KeepAlive(tab)
}

// BenchmarkRotationDecide measures the per-request key decision against its
// bare cost, hashing the client id.
func BenchmarkRotationDecide(b *testing.B) {
	tab := newRotTable(b, fleetSize)
	fillFleet(b, tab)
	now := rotStart.Add(day)
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprintf("%032X", i*97)
	}
	b.Run("hash-only", func(b *testing.B) {
		i := 0
		for b.Loop() {
			_ = KeyOf(ids[i&1023])
			i++
		}
	})
	b.Run("decide", func(b *testing.B) {
		i := 0
		for b.Loop() {
			_ = tab.Decide(ids[i&1023], now)
			i++
		}
	})
	b.Run("decide-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				_ = tab.Decide(ids[i&1023], now)
				i++
			}
		})
	})
}

// BenchmarkRotationPersist is one full persistence cycle of 100,000 clients:
// snapshot, encode, decode, and merge into a fresh table (a restart).
func BenchmarkRotationPersist(b *testing.B) {
	tab := newRotTable(b, fleetSize)
	fillFleet(b, tab)
	now := rotStart.Add(day)
	for b.Loop() {
		data, err := tab.Snapshot().MarshalBinary()
		if err != nil {
			b.Fatal(err)
		}
		snap, err := DecodeRotationSnapshot(data)
		if err != nil {
			b.Fatal(err)
		}
		fresh := newRotTable(b, fleetSize)
		if st, err := fresh.Merge(snap, now); err != nil || st.Added != fleetSize {
			b.Fatalf("merge: %+v, %v", st, err)
		}
		b.ReportMetric(float64(len(data)), "bytes/snapshot")
	}
}

// FuzzDecodeRotationSnapshot: the decoder never panics, and whatever it
// accepts re-encodes to the same bytes and merges into a table.
func FuzzDecodeRotationSnapshot(f *testing.F) {
	tab := newRotTable(f, 10)
	play(f, tab, []rotEvent{anchor("a", time.Hour), hb("a", 2*time.Hour), {"hb-plain", strings.Repeat("b", 40), time.Hour, true}})
	good, err := tab.Snapshot().MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:headerSize+trailerSize])
	f.Fuzz(func(t *testing.T, data []byte) {
		snap, err := DecodeRotationSnapshot(data)
		if err != nil {
			return
		}
		again, err := snap.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted snapshot re-encodes differently")
		}
		if snap.Window.End.After(snap.Window.Start) && !snap.Window.Start.IsZero() {
			p := RotationPolicy{Window: snap.Window}
			tab, err := NewRotationTable(p, 4)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tab.Merge(snap, snap.Window.Start); err != nil {
				t.Fatal(err)
			}
		}
	})
}
