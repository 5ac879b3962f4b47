package rewrite

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/beevik/etree"
)

// BenchmarkApply measures the rewrite, as the pipeline runs it (a
// Transform), on the SyLink of docs/protocol.md against
// the bare operation the pipeline does anyway (parse and serialize), so the
// ratio of the two sub-benchmarks is the rewrite's cost.
func BenchmarkApply(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("testdata", "golden", "sylink.in.xml"))
	if err != nil {
		b.Fatal(err)
	}
	tr, err := NewTransform(Rules{Addresses: []string{"gw.example.com", "203.0.113.10"}, HTTPSPort: 443, Certificate: nextCert(b)})
	if err != nil {
		b.Fatal(err)
	}
	run := func(b *testing.B, rewrite bool) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			doc := etree.NewDocument()
			if err := doc.ReadFromBytes(data); err != nil {
				b.Fatal(err)
			}
			if rewrite {
				if err := tr.Apply(doc.Root()); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := doc.WriteToBytes(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("parse-serialize", func(b *testing.B) { run(b, false) })
	b.Run("parse-rewrite-serialize", func(b *testing.B) { run(b, true) })
}
