package canonical

import (
	"errors"
	"testing"
)

// pathRefusals holds every path spelling from issue 11 and the rule that
// must refuse it. fuzz_test.go seeds the fuzzer with the same table.
var pathRefusals = []struct {
	name, raw, reason string
}{
	// issue 11, HIGH: Windows path traversal.
	{"encoded backslash traversal", "/secars/..%5c..%5cadmin", ReasonBackslash},
	{"encoded backslash upper-case", "/secars/..%5C..%5Cadmin", ReasonBackslash},
	{"raw backslash traversal", `/secars/..\..\sepm`, ReasonBackslash},
	{"encoded dots and backslash", "/secars/%2e%2e%5cx", ReasonBackslash},
	{"encoded NUL", "/secars/secars.dll%00.xml", ReasonNulOrControl},
	{"overlong slash", "/secars/..%c0%af..%c0%afadmin", ReasonInvalidUTF8},
	{"overlong dot", "/secars/%c0%ae%c0%ae/admin", ReasonInvalidUTF8},
	{"double-encoded dot", "/secars/%252e%252e/admin", ReasonDoubleEncoding},
	{"double-encoded backslash", "/secars/..%255c..%255cadmin", ReasonDoubleEncoding},
	{"console servlet through traversal", "/secars/..%5c..%5cservlet/ConsoleServlet", ReasonBackslash},
	// issue 11, MEDIUM: Windows-equivalent names of the DLL.
	{"trailing slash", "/secars/secars.dll/", ReasonEmptySegment},
	{"trailing dot", "/secars/secars.dll.", ReasonTrailingDotSpace},
	{"encoded trailing space", "/secars/secars.dll%20", ReasonTrailingDotSpace},
	{"encoded trailing dot", "/secars/secars.dll%2e", ReasonTrailingDotSpace},
	{"short name", "/secars/SECARS~1.DLL", ReasonShortName},
	{"alternate data stream", "/secars/secars.dll::$DATA", ReasonAlternateStream},
	{"encoded alternate data stream", "/secars/secars.dll%3a%3a$DATA", ReasonAlternateStream},
	// The other rules.
	{"encoded slash", "/secars%2fsecars.dll", ReasonEncodedSeparator},
	{"encoded slash lower-case", "/secars%2Fsecars.dll", ReasonEncodedSeparator},
	{"raw control byte", "/secars/\x01", ReasonNulOrControl},
	{"raw DEL", "/secars/\x7f", ReasonNulOrControl},
	{"encoded DEL", "/secars/%7f", ReasonNulOrControl},
	{"encoded tab", "/secars/a%09b", ReasonNulOrControl},
	{"full-width solidus", "/secars/..%ef%bc%8f..%ef%bc%8fadmin", ReasonNonASCII},
	{"raw full-width solidus", "/secars/..\uff0f..\uff0fadmin", ReasonNonASCII},
	{"raw Latin-1 byte", "/secars/\xe9", ReasonInvalidUTF8},
	{"encoded lone continuation", "/secars/%80", ReasonInvalidUTF8},
	{"encoded percent", "/secars/100%25", ReasonDoubleEncoding},
	{"bad escape", "/secars/%zz", ReasonBadEscape},
	{"truncated escape", "/secars/%4", ReasonBadEscape},
	{"lone percent", "/secars/%", ReasonBadEscape},
	{"half-hex escape", "/secars/%4g", ReasonBadEscape},
	{"dot segment", "/secars/./secars.dll", ReasonDotSegment},
	{"dot-dot segment", "/secars/../secreg/secreg.dll", ReasonDotSegment},
	{"encoded dot-dot", "/secars/%2e%2e/secreg/secreg.dll", ReasonDotSegment},
	{"final dot-dot", "/secars/..", ReasonDotSegment},
	{"empty segment", "/secars//secars.dll", ReasonEmptySegment},
	{"leading empty segment", "//secars/secars.dll", ReasonEmptySegment},
	{"segment ending in space", "/secars /secars.dll", ReasonTrailingDotSpace},
	{"directory ending in dot", "/secars./secars.dll", ReasonTrailingDotSpace},
	{"Tomcat path parameter", "/content/..;/servlet/ConsoleServlet", ReasonSemicolon},
	{"session path parameter", "/secars/secars.dll;jsessionid=1", ReasonSemicolon},
	{"encoded question mark", "/secars/secars.dll%3f", ReasonReservedCharacter},
	{"encoded hash", "/secars/secars.dll%23x", ReasonReservedCharacter},
	{"asterisk", "/secars/*.dll", ReasonReservedCharacter},
	{"encoded quote", "/secars/%22", ReasonReservedCharacter},
	{"angle brackets", "/secars/%3cx%3e", ReasonReservedCharacter},
	{"pipe", "/secars/a|b", ReasonReservedCharacter},
	{"empty", "", ReasonRequestTarget},
	{"asterisk form", "*", ReasonRequestTarget},
	{"absolute form", "http://10.0.0.5:8014/secars/secars.dll", ReasonRequestTarget},
	{"relative", "secars/secars.dll", ReasonRequestTarget},
}

func TestPathRefusesEveryAmbiguousSpellingWithItsReason(t *testing.T) {
	for _, tc := range pathRefusals {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Path(tc.raw)
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("Path(%q) = %q, %v; want a refusal %s", tc.raw, got, err, tc.reason)
			}
			if cerr.Reason != tc.reason || cerr.Part != "path" {
				t.Errorf("Path(%q) refused as %s/%s (%v), want path/%s", tc.raw, cerr.Part, cerr.Reason, err, tc.reason)
			}
			if cerr.Offset < 0 || cerr.Offset > len(tc.raw) {
				t.Errorf("offset %d outside the input of %d bytes", cerr.Offset, len(tc.raw))
			}
		})
	}
}

func TestPathDecodesOnceAndAcceptsCanonicalSpellings(t *testing.T) {
	tests := []struct {
		name, raw, want string
	}{
		{"root", "/", "/"},
		{"heartbeat DLL", "/secars/secars.dll", "/secars/secars.dll"},
		{"case kept for the caller to match", "/SECARS/SecArs.DLL", "/SECARS/SecArs.DLL"},
		{"encoded unreserved", "/secars/secars%2edll", "/secars/secars.dll"},
		{"encoded letters", "/%73ecars/secars.dll", "/secars/secars.dll"},
		{"inner space", "/content/a%20b.dat", "/content/a b.dat"},
		{"dots inside a name", "/content/v1..2/x.dat", "/content/v1..2/x.dat"},
		{"leading dot name", "/content/.well", "/content/.well"},
		{"sub-delimiters", "/content/a+b,c=d&e$f@g!h'(i)", "/content/a+b,c=d&e$f@g!h'(i)"},
		{"deep path", "/content/{A1B2}/20240101/full.zip", "/content/{A1B2}/20240101/full.zip"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Path(tc.raw)
			if err != nil || got != tc.want {
				t.Fatalf("Path(%q) = %q, %v; want %q", tc.raw, got, err, tc.want)
			}
			again, err := Path(got)
			if err != nil || again != got {
				t.Errorf("Path is not idempotent: Path(%q) = %q, %v", got, again, err)
			}
		})
	}
}

var decisionKeys = []string{"action", "hostid", "chk"}

// queryRefusals holds the query attacks of issue 11 and the other rules.
var queryRefusals = []struct {
	name, raw, reason string
}{
	// issue 11: the bridge decided on the first action, the manager read another.
	{"repeated action", "action=index&action=log", ReasonDuplicateKey},
	{"repeated action in other case", "action=index&ACTION=log", ReasonDuplicateKey},
	{"repeated action encoded", "action=index&act%69on=log", ReasonDuplicateKey},
	{"repeated action, second without value", "action=index&action", ReasonDuplicateKey},
	{"repeated host id", "hostid=ABC&hostid=abd", ReasonDuplicateKey},
	{"semicolon separator", "action=index;action=log", ReasonSemicolon},
	{"encoded NUL in value", "action=index%00log", ReasonNulOrControl},
	{"encoded NUL in key", "act%00ion=log", ReasonNulOrControl},
	{"encoded newline", "hostid=a%0d%0aX-Injected:1", ReasonNulOrControl},
	{"raw control byte", "hostid=a\x01", ReasonNulOrControl},
	{"bad escape", "hostid=%zz", ReasonBadEscape},
	{"truncated escape", "hostid=%4", ReasonBadEscape},
	{"overlong in value", "hostid=%c0%af", ReasonInvalidUTF8},
	{"lone continuation", "hostid=%80", ReasonInvalidUTF8},
	{"truncated rune", "hostid=%e2%82", ReasonInvalidUTF8},
	{"surrogate", "hostid=%ed%a0%80", ReasonInvalidUTF8},
	{"raw hash", "action=index#log", ReasonReservedCharacter},
	// A Windows manager "best fits" full-width letters to ASCII.
	{"full-width twin of a decision key", "action=index&%ef%bd%81ction=log", ReasonNonASCII},
	{"raw full-width twin of a decision key", "action=index&\xef\xbd\x81ction=log", ReasonNonASCII},
	{"non-ASCII key no decision reads", "n%c3%a4me=x", ReasonNonASCII},
	{"full-width letter in a decision value", "action=%ef%bd%89ndex", ReasonNonASCII},
	{"non-ASCII host id", "hostid=0A1B%ef%bc%a3", ReasonNonASCII},
}

func TestQueryRefusesAmbiguousQueriesWithTheirReason(t *testing.T) {
	for _, tc := range queryRefusals {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Query(tc.raw, decisionKeys)
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("Query(%q) = %q, %v; want a refusal %s", tc.raw, got, err, tc.reason)
			}
			if cerr.Reason != tc.reason || cerr.Part != "query" {
				t.Errorf("Query(%q) refused as %s/%s (%v), want query/%s", tc.raw, cerr.Part, cerr.Reason, err, tc.reason)
			}
		})
	}
}

func TestQueryKeepsBytesAndRewritesOnlyDecisionKeyNames(t *testing.T) {
	tests := []struct {
		name, raw, want string
	}{
		{"empty", "", ""},
		{"heartbeat", "action=12&hostid=0A1B2C&chk=1", "action=12&hostid=0A1B2C&chk=1"},
		{"key case rewritten", "Action=12&HOSTID=0A1B2C", "action=12&hostid=0A1B2C"},
		{"encoded key rewritten", "act%69on=12", "action=12"},
		{"value bytes kept", "hostid=%41%62+c&x=%e2%82%ac", "hostid=%41%62+c&x=%e2%82%ac"},
		{"other keys may repeat", "x=1&x=2&action=3", "x=1&x=2&action=3"},
		{"key without value rewritten", "ACTION&x", "action&x"},
		{"empty pairs kept", "&&action=1&", "&&action=1&"},
		{"equals in value kept", "hostid=a=b", "hostid=a=b"},
		{"non-decision key differing by plus", "action+=1&action=2", "action+=1&action=2"},
		{"non-ASCII value", "name=%c3%a9t%c3%a9", "name=%c3%a9t%c3%a9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Query(tc.raw, decisionKeys)
			if err != nil || got != tc.want {
				t.Fatalf("Query(%q) = %q, %v; want %q", tc.raw, got, err, tc.want)
			}
		})
	}
}

func TestQueryWithoutDecisionKeysStillRefusesBadBytes(t *testing.T) {
	if _, err := Query("a=1&a=2", nil); err != nil {
		t.Errorf("repeated keys with no decision keys: %v, want accepted", err)
	}
	if _, err := Query("a=%zz", nil); err == nil {
		t.Error("a bad escape was accepted")
	}
}

func TestQueryRefusesMoreThan64DecisionKeys(t *testing.T) {
	keys := make([]string, MaxDecisionKeys+1)
	for i := range keys {
		keys[i] = "k" + itoa(i)
	}
	if _, err := Query("k1=1", keys); !errors.Is(err, ErrTooManyDecisionKeys) {
		t.Errorf("err = %v, want ErrTooManyDecisionKeys", err)
	}
}

func TestQueryAcceptedDoesNotAllocate(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := Query("action=12&hostid=0A1B2C&x=%e2%82%ac", decisionKeys); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Query allocated %v times per call, want 0", allocs)
	}
}

func TestPathWithoutEscapesDoesNotAllocate(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := Path("/secars/secars.dll"); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Path allocated %v times per call, want 0", allocs)
	}
}

func TestErrorSaysPartReasonAndWhere(t *testing.T) {
	_, err := Path("/secars/..%5cx")
	if got, want := err.Error(), "path: backslash at byte 10"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	_, err = Query("action=1&Action=2", decisionKeys)
	if got, want := err.Error(), "query: duplicate_key (key action)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
