package secars

import (
	"errors"
	"strings"
	"testing"
)

const testKCS = "5CD5A1B2C3D4E5F60718293A4B5C6D7E"

func mustKey(t testing.TB, kcs string) Key {
	t.Helper()
	k, err := NewKey(kcs)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestEncodeDecodeRoundTripsAndLooksLikeARealQuery(t *testing.T) {
	k := mustKey(t, testKCS)
	tests := []Query{
		{Action: ActionIndex, HostID: strings.Repeat("AB", 16), Hostname: "client-000001", Seq: 7},
		{Action: ActionRegister, Hostname: "pc"},
		{Action: ActionLog, HostID: strings.Repeat("0F", 16), Seq: 1 << 40},
	}
	for _, q := range tests {
		h := k.Encode(q, [4]byte{1, 2, 3, 4})
		if len(h) < 900 || len(h) > 1200 {
			t.Errorf("h= is %d hex characters, want about 1,000", len(h))
		}
		got, err := k.Decode(strings.ToLower(h))
		if err != nil {
			t.Fatalf("Decode(Encode(%+v)): %v", q, err)
		}
		if got != q {
			t.Errorf("Decode(Encode(%+v)) = %+v", q, got)
		}
	}
}

func TestOneClientsQueryDiffersOnEveryRequest(t *testing.T) {
	k := mustKey(t, testKCS)
	q := Query{Action: ActionIndex, HostID: strings.Repeat("AB", 16)}
	a, b := k.Encode(q, [4]byte{1}), k.Encode(q, [4]byte{2})
	if a == b {
		t.Error("two nonces gave the same h=")
	}
}

func TestDecodeRefuses(t *testing.T) {
	k := mustKey(t, testKCS)
	good := k.Encode(Query{Action: ActionIndex, HostID: strings.Repeat("AB", 16)}, [4]byte{9})
	flipped := []byte(good)
	if flipped[20] == '0' {
		flipped[20] = '1'
	} else {
		flipped[20] = '0'
	}
	tests := []struct {
		name string
		key  Key
		h    string
		want error
	}{
		{"wrong KCS", mustKey(t, "00"+testKCS[2:]), good, ErrKey},
		{"altered byte", k, string(flipped), ErrKey},
		{"not hex", k, strings.Repeat("zz", 40), ErrFormat},
		{"odd length", k, good[:len(good)-1], ErrFormat},
		{"too short", k, "0011", ErrFormat},
		{"too long", k, strings.Repeat("00", MaxHexLen), ErrFormat},
		{"no host id", k, k.Encode(Query{Action: ActionIndex}, [4]byte{}), ErrFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.key.Decode(tt.h)
			if !errors.Is(err, tt.want) {
				t.Errorf("Decode = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNewKeyNamesTheBadKCS(t *testing.T) {
	for _, kcs := range []string{"", "xyz", strings.Repeat("A", 300)} {
		if _, err := NewKey(kcs); err == nil || !strings.Contains(err.Error(), "kcs") {
			t.Errorf("NewKey(%q) = %v, want an error naming kcs", kcs, err)
		}
	}
}

func TestParsePlainRefusesRepeatsAndUnknownKeys(t *testing.T) {
	id := strings.Repeat("AB", 16)
	for _, plain := range []string{
		"action=12&action=13&hostid=" + id,
		"action=12&hostid=" + id + "&evil=1",
		"action=x&hostid=" + id,
		"hostid=" + id,
		"action=12&hostid=" + id + "&junk",
	} {
		if _, err := parsePlain(plain); !errors.Is(err, ErrFormat) {
			t.Errorf("parsePlain(%q) = %v, want ErrFormat", plain, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	k := mustKey(f, testKCS)
	f.Add(k.Encode(Query{Action: ActionIndex, HostID: strings.Repeat("AB", 16), Seq: 3}, [4]byte{1, 2, 3, 4}))
	f.Add(k.Encode(Query{Action: ActionRegister, Hostname: "pc"}, [4]byte{}))
	f.Add("")
	f.Add("00112233445566778899")
	f.Fuzz(func(t *testing.T, h string) {
		q, err := k.Decode(h)
		if err != nil {
			return
		}
		if q.Action != ActionRegister && !validHostID(q.HostID) {
			t.Errorf("Decode accepted host id %q", q.HostID)
		}
	})
}

func FuzzParsePlain(f *testing.F) {
	f.Add("action=12&hostid=" + strings.Repeat("AB", 16) + "&seq=1&pad=xx")
	f.Add("action=10&hostname=pc")
	f.Fuzz(func(t *testing.T, plain string) {
		q, err := parsePlain(plain)
		if err == nil && q.Action != ActionRegister && !validHostID(q.HostID) {
			t.Errorf("parsePlain accepted host id %q", q.HostID)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	k := mustKey(b, testKCS)
	h := k.Encode(Query{Action: ActionIndex, HostID: strings.Repeat("AB", 16)}, [4]byte{1})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Decode(h); err != nil {
			b.Fatal(err)
		}
	}
}
