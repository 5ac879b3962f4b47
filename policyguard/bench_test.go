package policyguard

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"runtime"
	"testing"
	"time"
)

// BenchmarkResign measures verify → re-sign on a cache miss (a fresh
// Resigner with caching disabled each round). Compare with
// BenchmarkRSASign2048 from the same run: the target is a rate of at least
// half the bare signature's.
func BenchmarkResign(b *testing.B) {
	for _, size := range []int{20 << 10, 100 << 10} {
		b.Run(sizeName(size), func(b *testing.B) {
			doc := managerSign(b, testParty(b, "manager"), sepmProfile(size), managerSignOptions{})
			v := newTestVerifier(b, VerifyOptions{}, "manager")
			gw := testParty(b, "gateway").signer(b)
			r := NewResigner(v, 0)
			b.SetBytes(int64(len(doc)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Resign(doc, gw, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRSASign2048 is the bare operation: an RSA-2048 PKCS#1 v1.5
// SHA-256 signature of a 32-byte digest.
func BenchmarkRSASign2048(b *testing.B) {
	key := testParty(b, "gateway").key
	digest := sha256.Sum256([]byte("legacygate"))
	for b.Loop() {
		if _, err := key.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResignToSignRatio interleaves one cache-miss re-sign and one bare
// RSA-2048 signature per iteration and reports the re-sign rate as a
// fraction of the bare signature rate, by thread CPU time ("rate-ratio",
// target >= 0.5) and by wall time ("wall-ratio"). Interleaving on one
// locked thread keeps the ratio meaningful on a loaded machine, where two
// separate benchmarks see different load.
func BenchmarkResignToSignRatio(b *testing.B) {
	for _, size := range []int{20 << 10, 100 << 10} {
		doc := managerSign(b, testParty(b, "manager"), sepmProfile(size), managerSignOptions{})
		r := NewResigner(newTestVerifier(b, VerifyOptions{}, "manager"), 0)
		paths := []struct {
			name   string
			resign func(*Signer) ([]byte, error)
		}{
			{"Resign", func(s *Signer) ([]byte, error) { return r.Resign(doc, s, nil) }},
			{"goxmldsig-path", func(s *Signer) ([]byte, error) { return r.slowResign(doc, s, nil) }},
		}
		for _, path := range paths {
			b.Run(sizeName(size)+"/"+path.name, func(b *testing.B) {
				benchmarkRatio(b, path.resign)
			})
		}
	}
}

func benchmarkRatio(b *testing.B, resign func(*Signer) ([]byte, error)) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	gw := testParty(b, "gateway")
	signer := gw.signer(b)
	digest := sha256.Sum256([]byte("legacygate"))
	var resignCPU, signCPU, resignWall, signWall time.Duration
	for b.Loop() {
		c0, haveCPU := threadCPUTime()
		t0 := time.Now()
		if _, err := resign(signer); err != nil {
			b.Fatal(err)
		}
		c1, _ := threadCPUTime()
		t1 := time.Now()
		if _, err := gw.key.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
		c2, _ := threadCPUTime()
		resignWall += t1.Sub(t0)
		signWall += time.Since(t1)
		if haveCPU {
			resignCPU += c1 - c0
			signCPU += c2 - c1
		}
	}
	b.ReportMetric(float64(signWall)/float64(resignWall), "wall-ratio")
	if resignCPU > 0 {
		b.ReportMetric(float64(signCPU)/float64(resignCPU), "rate-ratio")
	}
}
