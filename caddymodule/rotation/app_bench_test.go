package rotation

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/internal/rotationtable"
)

// BenchmarkAppKeyDecision compares the app's per-request decision (client
// id placeholder resolved from the request, table lookup) with the bare
// table decision, over 100,000 tracked clients.
func BenchmarkAppKeyDecision(b *testing.B) {
	clock := &testClock{now: inWindow}
	a := benchApp(b, clock, 100_000)
	r := clientRequest("GET", "/secars/secars.dll?action=profile&hostid=H77")
	b.Run("app.signerFor", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			a.SignerFor(r)
		}
	})
	b.Run("table.Decide", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			a.table.Decide("H77", inWindow)
		}
	})
}

// BenchmarkRotationStoreSync is one persistence cycle (lock, list, load and
// merge every file, save) with two instances of 100,000 clients each in
// file storage, against the bare snapshot encode.
func BenchmarkRotationStoreSync(b *testing.B) {
	clock := &testClock{now: inWindow}
	dir := b.TempDir()
	storage := &certmagic.FileStorage{Path: dir}
	tables := make([]*rotationtable.RotationTable, 2)
	stores := make([]*rotationStore, 2)
	for i := range tables {
		tables[i] = benchApp(b, clock, 100_000).table
		stores[i] = newRotationStore(storage, tables[i].Policy().Window, "gw"+strconv.Itoa(i), defaultPurgeAge, zap.NewNop())
		if err := stores[i].save(context.Background(), tables[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("sync-unchanged", func(b *testing.B) {
		for b.Loop() {
			if err := stores[0].sync(context.Background(), tables[0], inWindow); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The worst case: the other instance wrote new progress since the last
	// cycle, so its 100,000 records are decoded and merged again.
	b.Run("sync-other-changed", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			tables[1].Heartbeat("H"+strconv.Itoa(i), inWindow.Add(time.Hour), false)
			if err := stores[1].save(context.Background(), tables[1]); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := stores[0].sync(context.Background(), tables[0], inWindow); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("snapshot.MarshalBinary", func(b *testing.B) {
		for b.Loop() {
			if _, err := tables[0].Snapshot().MarshalBinary(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchApp(b *testing.B, clock *testClock, clients int) *App {
	b.Helper()
	a := &App{}
	table, err := rotationtable.NewRotationTable(rotationtable.RotationPolicy{
		Window: rotationtable.Window{Start: windowStart, End: windowEnd}, Grace: 90 * 24 * time.Hour,
	}, clients)
	if err != nil {
		b.Fatal(err)
	}
	k := testRotationKeys(b)
	a.table, a.current, a.next, a.now, a.ClientID, a.queryKey = table, k.current, k.next, clock.Now, defaultClientID, "hostid"
	for i := range clients {
		id := "H" + strconv.Itoa(i)
		table.Heartbeat(id, inWindow, false)
		if i%2 == 0 {
			table.AnchorFetched(id, inWindow)
			for j := range 3 {
				table.Heartbeat(id, inWindow.Add(time.Duration(j+1)*time.Minute), false)
			}
		}
	}
	return a
}
