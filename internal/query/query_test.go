package query

import (
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestValuesSeesEveryValueOfAKey(t *testing.T) {
	tests := []struct {
		name, raw, key string
		want           []string
		err            error
	}{
		{"one", "action=index&hostid=H1", "hostid", []string{"H1"}, nil},
		{"absent", "action=index", "hostid", nil, nil},
		{"empty query", "", "hostid", nil, nil},
		{"no equals sign is an empty value", "hostid", "hostid", []string{""}, nil},
		{"empty value", "hostid=", "hostid", []string{""}, nil},
		{"repeated, in order", "hostid=H1&x=1&hostid=H2", "hostid", []string{"H1", "H2"}, nil},
		{"a key without value repeats it", "hostid&hostid=H1", "hostid", []string{"", "H1"}, nil},
		{"value escapes decoded", "hostid=a%20b+c", "hostid", []string{"a b c"}, nil},
		{"value keeps later equals signs", "hostid=a=b", "hostid", []string{"a=b"}, nil},
		{"escaped key decoded", "host%69d=H3", "hostid", []string{"H3"}, nil},
		{"key case ignored", "HOSTID=ab&HostId=AB", "hostid", []string{"ab", "AB"}, nil},
		{"looked-up key case ignored", "hostid=x", "HOSTID", []string{"x"}, nil},
		{"escaped upper-case key", "HOST%49D=y", "hostid", []string{"y"}, nil},
		{"semicolon is part of the key", "hostid;x=1&hostid=H5", "hostid", []string{"H5"}, nil},
		{"semicolon is part of the value", "hostid=a;b", "hostid", []string{"a;b"}, nil},
		{"semicolon key looked up", "a;b=1", "a;b", []string{"1"}, nil},
		{"empty pairs skipped", "&&hostid=1&", "hostid", []string{"1"}, nil},
		{"bad escape in the value looked up", "hostid=%zz&hostid=H4", "hostid", nil, ErrEscape},
		{"bad escape in a key", "ho%zzst=1&hostid=H4", "hostid", nil, ErrEscape},
		{"bad escape in another key's value is not ours", "x=%zz&hostid=H4", "hostid", []string{"H4"}, nil},
		{"truncated escape", "hostid=%4", "hostid", nil, ErrEscape},
		{"dotless i", "host%C4%B1d=x", "hostid", nil, ErrAmbiguousKey},
		{"Kelvin sign folds to k", "%E2%84%AAey=x", "key", nil, ErrAmbiguousKey},
		{"NUL cuts the key for C readers", "hostid%00junk=x", "hostid", nil, ErrAmbiguousKey},
		{"full-width letter best-fits to ASCII", "%EF%BD%81ction=log", "action", nil, ErrAmbiguousKey},
		{"full-width upper-case key", "%EF%BC%A1CTION=log", "action", nil, ErrAmbiguousKey},
		{"other non-ASCII keys are just other keys", "h%C3%B6stid=x&hostid=y", "hostid", []string{"y"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Values(nil, tt.raw, tt.key)
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("Values(%q, %q) error %v, want %v", tt.raw, tt.key, err, tt.err)
			}
			if err == nil && !slices.Equal(got, tt.want) {
				t.Fatalf("Values(%q, %q) = %q, want %q", tt.raw, tt.key, got, tt.want)
			}
		})
	}
}

func TestValuesErrorNamesThePair(t *testing.T) {
	_, err := Values(nil, "hostid=%zz", "hostid")
	if err == nil || !strings.Contains(err.Error(), `"hostid"`) || !strings.Contains(err.Error(), `"%zz"`) {
		t.Fatalf("error %v, want one naming the key and the value", err)
	}
}

func TestSingleRefusesARepeatedKey(t *testing.T) {
	tests := []struct {
		name, raw string
		value     string
		found     bool
		err       error
	}{
		{"one", "action=index&hostid=H1", "H1", true, nil},
		{"absent", "action=index", "", false, nil},
		{"present and empty", "hostid=", "", true, nil},
		{"twice, same value", "hostid=H1&hostid=H1", "", false, ErrDuplicate},
		{"twice, case variants of the key", "HOSTID=ab&hostid=AB", "", false, ErrDuplicate},
		{"twice, one escaped", "hostid=H1&host%69d=H2", "", false, ErrDuplicate},
		{"twice, one without value", "hostid&hostid=H1", "", false, ErrDuplicate},
		{"bad escape", "hostid=%zz", "", false, ErrEscape},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, found, err := Single(tt.raw, "hostid")
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("Single(%q) error %v, want %v", tt.raw, err, tt.err)
			}
			if v != tt.value || found != tt.found {
				t.Fatalf("Single(%q) = %q, %v; want %q, %v", tt.raw, v, found, tt.value, tt.found)
			}
		})
	}
}

func TestSingleDoesNotAllocateForPlainValues(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		if v, ok, err := Single("action=index&hostid=0A1B2C3D&x=y", "hostid"); v != "0A1B2C3D" || !ok || err != nil {
			t.Fatal(v, ok, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations, want 0", allocs)
	}
}

func TestUpperFoldsASCIIOnly(t *testing.T) {
	tests := []struct{ in, want string }{
		{"0a1b2c3d", "0A1B2C3D"},
		{"0A1B", "0A1B"},
		{"ab-CD_{}", "AB-CD_{}"},
		{"ı ß é", "ı ß é"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := Upper(tt.in); got != tt.want {
			t.Errorf("Upper(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if got := string(AppendUpper([]byte("x"), tt.in)); got != "x"+tt.want {
			t.Errorf("AppendUpper(x, %q) = %q, want %q", tt.in, got, "x"+tt.want)
		}
	}
}

func TestPlaceholderNamesTheQueryKey(t *testing.T) {
	tests := []struct {
		text, key string
		ok, is    bool
	}{
		{"{http.request.uri.query.hostid}", "hostid", true, true},
		{"{query.hostid}", "hostid", true, true},
		{"{http.request.uri.query}", "", false, false},
		{"{query.}", "", false, true},
		{"id-{query.hostid}", "", false, true},
		{"{query.hostid}{client_ip}", "", false, true},
		{"{http.request.header.X-Id}", "", false, false},
		{"hostid", "", false, false},
	}
	for _, tt := range tests {
		key, ok := Placeholder(tt.text)
		if key != tt.key || ok != tt.ok {
			t.Errorf("Placeholder(%q) = %q, %v; want %q, %v", tt.text, key, ok, tt.key, tt.ok)
		}
		if is := MentionsPlaceholder(tt.text); is != tt.is {
			t.Errorf("MentionsPlaceholder(%q) = %v, want %v", tt.text, is, tt.is)
		}
	}
}

// FuzzValues checks Values against url.ParseQuery where they mean the same
// thing, and the promises url.ParseQuery does not make.
func FuzzValues(f *testing.F) {
	for _, s := range []string{"action=index&hostid=H1", "hostid=a%20b+c", "host%69d=x", "hostid;=1&hostid=2", "hostid=%zz", "HOSTID=ab&hostid=AB", "hostid%00=x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		for _, key := range []string{"hostid", "action"} {
			got, err := Values(nil, raw, key)
			upper, uerr := Values(nil, raw, strings.ToUpper(key))
			if (err == nil) != (uerr == nil) || !slices.Equal(got, upper) {
				t.Fatalf("Values(%q) differs between %q and its upper case: %q, %v vs %q, %v", raw, key, got, err, upper, uerr)
			}
			v, found, serr := Single(raw, key)
			switch {
			case err != nil && serr == nil:
				t.Fatalf("Values(%q, %q) fails (%v) but Single does not", raw, key, err)
			case err == nil && len(got) > 1 && !errors.Is(serr, ErrDuplicate):
				t.Fatalf("Single(%q, %q) = %v for values %q, want ErrDuplicate", raw, key, serr, got)
			case err == nil && len(got) == 1 && (serr != nil || !found || v != got[0]):
				t.Fatalf("Single(%q, %q) = %q, %v, %v for values %q", raw, key, v, found, serr, got)
			case err == nil && len(got) == 0 && (serr != nil || found):
				t.Fatalf("Single(%q, %q) = %q, %v, %v for no value", raw, key, v, found, serr)
			}
			if err != nil || strings.Contains(raw, ";") {
				continue
			}
			// Without ';' every pair url.ParseQuery keeps, it keeps as
			// Values does; collect the values of every key it found that
			// matches ours ignoring ASCII case.
			q, perr := url.ParseQuery(raw)
			if perr != nil {
				continue
			}
			var want []string
			for k, vs := range q {
				if EqualFold(k, key) {
					want = append(want, vs...)
				}
			}
			slices.Sort(want)
			sorted := slices.Sorted(slices.Values(got))
			if !slices.Equal(sorted, want) {
				t.Fatalf("Values(%q, %q) = %q, url.ParseQuery says %q", raw, key, got, want)
			}
		}
	})
}

func BenchmarkSingle(b *testing.B) {
	for _, bc := range []struct{ name, raw string }{
		{"plain", "action=index&hostid=0A1B2C3D4E5F60718293A4B5C6D7E8F9"},
		{"escaped", "action=index&host%69d=0A1B2C3D%2D4E5F"},
		{"absent", "action=index&x=1&y=2&z=3"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _, _ = Single(bc.raw, "hostid")
			}
		})
	}
}

func BenchmarkValues(b *testing.B) {
	raw := "action=index&hostid=0A1B2C3D4E5F60718293A4B5C6D7E8F9&hostid=x"
	var buf [4]string
	b.ReportAllocs()
	for b.Loop() {
		_, _ = Values(buf[:0], raw, "hostid")
	}
}

func TestFoldHelpersFoldASCIIOnly(t *testing.T) {
	if !EqualFold("/SECARS/secars.DLL", "/secars/SECARS.dll") {
		t.Error("ASCII case variants not equal")
	}
	if EqualFold("\u212a", "k") || EqualFold("/a\u212a", "/ak") {
		t.Error("KELVIN SIGN folded to k")
	}
	if !HasPrefixFold("/Content/x", "/content/") || HasPrefixFold("/cont", "/content/") {
		t.Error("HasPrefixFold wrong")
	}
}
