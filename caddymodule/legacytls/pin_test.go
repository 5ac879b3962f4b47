package legacytls

import (
	"strings"
	"testing"

	"github.com/legacygate/legacygate/integration/certs"
)

func TestParsePinRoundTrip(t *testing.T) {
	pair, err := certs.New(certs.SHA1, "manager.test", 1024)
	if err != nil {
		t.Fatal(err)
	}
	pin := PinOf(pair.Cert)
	if pin != pair.Pin() {
		t.Fatalf("PinOf = %s, certs.Pin = %s", pin, pair.Pin())
	}
	sum, err := ParsePin(pin)
	if err != nil {
		t.Fatal(err)
	}
	if FormatPin(sum) != pin {
		t.Fatalf("FormatPin(ParsePin(%s)) = %s", pin, FormatPin(sum))
	}
}

func FuzzParsePin(f *testing.F) {
	for _, seed := range []string{testPin, "sha256/", "sha256/AAAA", "md5/" + testPin[7:], "sha256/!!!", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sum, err := ParsePin(s)
		if err != nil {
			if !strings.Contains(err.Error(), "pin") {
				t.Fatalf("error %q does not say it is about the pin", err)
			}
			return
		}
		again, err := ParsePin(FormatPin(sum))
		if err != nil || again != sum {
			t.Fatalf("FormatPin(ParsePin(%q)) does not parse back: %v", s, err)
		}
	})
}
