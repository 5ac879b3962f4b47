package canonical

import "testing"

func BenchmarkPath(b *testing.B) {
	for _, bc := range []struct{ name, raw string }{
		{"plain", "/secars/secars.dll"},
		{"escaped", "/content/%7BA1B2C3D4%7D/20240101/full.zip"},
		{"refused", "/secars/..%5c..%5cadmin"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = Path(bc.raw)
			}
		})
	}
}

func BenchmarkQuery(b *testing.B) {
	for _, bc := range []struct{ name, raw string }{
		{"heartbeat", "action=index&hostid=0A1B2C3D4E5F60718293A4B5C6D7E8F9"},
		{"rewritten", "Action=index&HostID=0A1B2C3D4E5F60718293A4B5C6D7E8F9"},
		{"sep-obfuscated", "h=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = Query(bc.raw, decisionKeys)
			}
		})
	}
}
