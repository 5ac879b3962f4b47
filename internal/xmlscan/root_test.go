package xmlscan

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"testing"
)

func TestRoot(t *testing.T) {
	tests := []struct {
		body, root, reason string
	}{
		{"", "", ""},
		{"OK", "", ""},
		{"  \n", "", ""},
		{"\x1f\x8b\x08\x00", "", ""},
		{"<Profile/>", "Profile", ""},
		{"\xef\xbb\xbf <Profile a='1'>", "Profile", ""},
		{"<ds:ServerSettings\n xmlns:ds='x'>", "ServerSettings", ""},
		{`<?xml version="1.0" encoding="UTF-8"?><!--x--><?pi x?><Index>`, "Index", ""},
		{`<!DOCTYPE Profile SYSTEM "a>b"><Profile>`, "Profile", ""},
		{`<!DOCTYPE x [<!ENTITY e '<Index>'> <?pi ]>?> <!-- ' -->]><Profile>`, "Profile", ""},
		{"<Profile", "", ReasonMalformed},
		{"<", "", ReasonMalformed},
		{"<!-- open", "", ReasonMalformed},
		{"<?xml version='1.0'?>text<Profile/>", "", ReasonMalformed},
		{"<?xml version='1.0'?>", "", ReasonMalformed},
		{"<!DOCTYPE x [<!ENTITY e 'open>", "", ReasonMalformed},
		{"<![CDATA[<Index/>]]><Profile/>", "", ReasonMalformed},
		{"<:Profile/>", "", ReasonMalformed},
		{"<a:b:Profile/>", "", ReasonMalformed},
		{"<a:/>", "", ReasonMalformed},
		{"\xfe\xff\x00<", "", ReasonEncoding},
		{"<\x00P\x00", "", ReasonEncoding},
	}
	for _, tc := range tests {
		root, err := Root([]byte(tc.body))
		reason := ""
		var se *Error
		if errors.As(err, &se) {
			reason = se.Reason
		} else if err != nil {
			t.Errorf("Root(%q): error %v without a reason", tc.body, err)
		}
		if string(root) != tc.root || reason != tc.reason {
			t.Errorf("Root(%q) = %q, %q; want %q, %q", tc.body, root, reason, tc.root, tc.reason)
		}
	}
}

// FuzzRoot checks that the root scan never panics, finds a root only
// in XML, and agrees with encoding/xml on the root of well-formed documents.
func FuzzRoot(f *testing.F) {
	for _, seed := range []string{`<?xml version="1.0"?><Profile Serial="1"><Rules/><Signature>manager</Signature></Profile>`, `<Index><Profile Serial="1"/></Index>`, "OK", `<!DOCTYPE x [<!ENTITY e "]>">]><Profile/>`, "\xef\xbb\xbf<a:b/>"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		root, err := Root(body)
		if err != nil {
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		if root == nil {
			return
		}
		if want, ok := xmlRoot(body); ok && want != string(root) {
			t.Fatalf("Root = %q, encoding/xml says %q", root, want)
		}
	})
}

func xmlRoot(body []byte) (string, bool) {
	d := xml.NewDecoder(bytes.NewReader(body))
	root := ""
	for {
		tok, err := d.RawToken()
		if errors.Is(err, io.EOF) {
			return root, root != ""
		}
		if err != nil {
			return "", false
		}
		if start, ok := tok.(xml.StartElement); ok && root == "" {
			root = start.Name.Local
		}
	}
}

func TestPlainDecidesByTheBytesAlone(t *testing.T) {
	tests := []struct {
		body   string
		xml    bool
		reason string
	}{
		{"", false, ""},
		{"OK", false, ""},
		{"\x1f\x8b\x08\x00", false, ""},
		{" \r\n<Profile/>", true, ""},
		{"\xef\xbb\xbf\n<Profile/>", true, ""},
		{"<", true, ""},
		{"\xff\xfe<\x00P\x00", false, ReasonEncoding},
		{"\x00<\x00P", false, ReasonEncoding},
	}
	for _, tc := range tests {
		isXML, err := Plain([]byte(tc.body))
		reason := ""
		if se, ok := errors.AsType[*Error](err); ok {
			reason = se.Reason
		} else if err != nil {
			t.Errorf("Plain(%q): error %v without a reason", tc.body, err)
		}
		if isXML != tc.xml || reason != tc.reason {
			t.Errorf("Plain(%q) = %v, %q; want %v, %q", tc.body, isXML, reason, tc.xml, tc.reason)
		}
	}
}
