package fleet

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// The soak mode holds 100,000 clients: each is a struct in one slice and a
// 16-byte entry in the schedule's heap, sharing server lists and serials.
// A registered client that has adopted its manager's SyLink and profile
// must cost at most 256 bytes.
func TestMemoryPerClientInSoakMode(t *testing.T) {
	a, _, _ := testPairs(t)
	m := newFakeSEPM(t)
	const n = 100_000
	cfg := fastConfig(t, m.settings(a), n)
	cfg.PlaintextShare = 0.1
	before := heapInUse()
	f := newFleet(t, cfg)
	adopted, err := ParseSyLink(cfg.SyLink, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range f.clients {
		c := &f.clients[i]
		// What a heartbeat leaves behind: a HostId of its own (32 hex
		// digits, as SEPM's), shared serials and a shared adopted list.
		c.hostID = fmt.Sprintf("%032X", i)
		c.profileSerial = f.intern("A3AF-01/30/2012 23:50:54 284")
		c.sylinkSerial = f.intern("SL-2")
		f.adopt(c, adopted)
		f.sched.add(int32(i), now.Add(time.Duration(i)*time.Millisecond))
	}
	after := heapInUse()
	per := float64(after-before) / n
	t.Logf("%d clients: %.0f bytes each (client struct %d B, schedule entry 16 B, HostId 32 B + header)", n, per, clientSize)
	if per > 256 {
		t.Errorf("%.0f bytes per client, want at most 256", per)
	}
	runtime.KeepAlive(f)
}

// BenchmarkThousandClients runs 1,000 clients heartbeating every 1-2 s over
// TLS against an in-test manager for 6 s and reports the CPU per heartbeat
// (fleet and server together) and how late heartbeats start at the 99th
// percentile: figures for a shared box, not pass/fail lines. Every client
// must still end online. Run it with -benchtime 1x.
func BenchmarkThousandClients(b *testing.B) {
	a, _, _ := testPairs(b)
	m := newFakeSEPM(b)
	m.publishProfile(a)
	const n = 1000
	for range b.N {
		cfg := fastConfig(b, m.settings(a), n)
		cfg.Interval, cfg.Randomize = time.Second, time.Second
		f := newFleet(b, cfg)
		cpuBefore := processCPU(b)
		s := runUntil(b, f, 6*time.Second, func(Summary) bool { return false })
		cpu := processCPU(b) - cpuBefore
		perBeat := cpu / time.Duration(max(s.Heartbeats, 1))
		b.ReportMetric(float64(perBeat.Microseconds()), "cpu-µs/heartbeat")
		b.ReportMetric(s.LagP99Ms, "lag-p99-ms")
		b.ReportMetric(float64(s.Heartbeats)/s.ElapsedSeconds, "heartbeats/s")
		checkPartition(b, s)
		if s.Online != n || s.Orphaned != 0 || s.EverDegraded != 0 {
			b.Errorf("%+v: want all %d online", s, n)
		}
	}
}

// processCPU is the user and system CPU time this process has used.
func processCPU(t testing.TB) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHeartbeat compares one client's steady heartbeat (index GET,
// parse, nothing changed) with the bare operation: an HTTP GET of the same
// index on the same shared transport.
func BenchmarkHeartbeat(b *testing.B) {
	a, _, _ := testPairs(b)
	m := newFakeSEPM(b)
	m.publishProfile(a)
	doc, err := BuildSyLink(m.settings(a))
	if err != nil {
		b.Fatal(err)
	}
	f, err := New(Config{Count: 1, SyLink: doc, Interval: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	c := &f.clients[0]
	f.heartbeat(c, 0, rng) // register and download once
	if c.hostID == "" {
		b.Fatal("first heartbeat did not register")
	}
	b.Run("fleet", func(b *testing.B) {
		for b.Loop() {
			f.heartbeat(c, 0, rng)
		}
		if s := f.Summary(); s.Online != 1 {
			b.Fatalf("client not online: %+v", s)
		}
	})
	b.Run("bare-get", func(b *testing.B) {
		srv := c.settings.Blocks[0].Servers[0]
		hc := f.http.get(false, false)
		url := srv.BaseURL() + pathAgent + "?action=index&hostid=" + c.hostID
		for b.Loop() {
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			req.Header.Set("User-Agent", userAgent)
			resp, err := hc.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// BenchmarkSoakMemory runs 20,000 live clients through their first
// heartbeat (register, index, profile) and reports the heap per client,
// transports and connection buffers included.
func BenchmarkSoakMemory(b *testing.B) {
	a, _, _ := testPairs(b)
	m := newFakeSEPM(b)
	m.publishProfile(a)
	const n = 20_000
	doc, err := BuildSyLink(m.settings(a))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		before := heapInUse()
		f, err := New(Config{Count: n, SyLink: doc, Interval: 4 * time.Second, Concurrency: 64})
		if err != nil {
			b.Fatal(err)
		}
		r := startPhases(b, f)
		s := r.within(60*time.Second, func(s Summary) bool { return s.Online == n })
		per := float64(heapInUse()-before) / n
		r.stop()
		if s.Online != n {
			b.Fatalf("%+v: want all %d online", s, n)
		}
		b.ReportMetric(per, "heap-B/client")
		b.ReportMetric(float64(s.Heartbeats)/s.ElapsedSeconds, "heartbeats/s")
	}
}

// clientSize is the size of one client struct.
const clientSize = unsafe.Sizeof(client{})
