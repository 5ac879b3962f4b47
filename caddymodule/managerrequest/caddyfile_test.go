package managerrequest

import (
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func TestUnmarshalCaddyfileReadsEverySubdirective(t *testing.T) {
	off := false
	tests := []struct {
		name, input string
		want        ManagerRequest
	}{
		{
			name: "the documented example",
			input: `manager_request {
				allow GET POST /secars/secars.dll
				allow POST /secreg/secreg.dll
				allow GET HEAD /content/*
				decision_keys action hostid
				max_header_size 16KB
				keep_header Set-Cookie
				fixed_error_body off
			}`,
			want: ManagerRequest{
				Allow: []AllowRule{
					{Path: "/secars/secars.dll", Methods: []string{"GET", "POST"}},
					{Path: "/secreg/secreg.dll", Methods: []string{"POST"}},
					{Path: "/content/*", Methods: []string{"GET", "HEAD"}},
				},
				DecisionKeys:   []string{"action", "hostid"},
				MaxHeaderSize:  16000,
				KeepHeaders:    []string{"Set-Cookie"},
				FixedErrorBody: &off,
			},
		},
		{
			name: "repeated lists append",
			input: `manager_request {
				allow GET /a
				decision_keys action
				decision_keys hostid
				keep_header Server
				keep_header Via X-Powered-By
				max_header_size 16KiB
			}`,
			want: ManagerRequest{
				Allow:         []AllowRule{{Path: "/a", Methods: []string{"GET"}}},
				DecisionKeys:  []string{"action", "hostid"},
				KeepHeaders:   []string{"Server", "Via", "X-Powered-By"},
				MaxHeaderSize: 16384,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got ManagerRequest
			if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestUnmarshalCaddyfileRefusesBadInputNamingTheSubdirective(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"argument on the directive", "manager_request /secars {\n}", `manager_request: takes no arguments, only a block (unexpected "/secars"), at Testfile:1`},
		{"unknown subdirective", "manager_request {\n\tallows GET /a\n}", `manager_request: unknown subdirective "allows" (did you mean "allow"?), at Testfile:2`},
		{"misspelt decision keys", "manager_request {\n\tdecision_key action\n}", `unknown subdirective "decision_key" (did you mean "decision_keys"?)`},
		{"misspelt keep_header", "manager_request {\n\tkeep_headers Server\n}", `unknown subdirective "keep_headers" (did you mean "keep_header"?)`},
		{"misspelt max_header_size", "manager_request {\n\tmax_headers_size 1KB\n}", `(did you mean "max_header_size"?)`},
		{"misspelt fixed_error_body", "manager_request {\n\tfixed_error_bodies on\n}", `(did you mean "fixed_error_body"?)`},
		{"allow without method", "manager_request {\n\tallow /a\n}", `manager_request: allow: want one or more methods and a path`},
		{"allow without path", "manager_request {\n\tallow GET POST\n}", `manager_request: allow: the last value "POST" is not a path starting with /`},
		{"lower-case method", "manager_request {\n\tallow get /a\n}", `manager_request: allow: method "get" is not an upper-case name (did you mean "GET"?)`},
		{"decision_keys empty", "manager_request {\n\tdecision_keys\n}", `manager_request: decision_keys: want at least one query key`},
		{"max_header_size two values", "manager_request {\n\tmax_header_size 1 2\n}", `manager_request: max_header_size: want exactly one size`},
		{"max_header_size not a size", "manager_request {\n\tmax_header_size big\n}", `manager_request: max_header_size: "big" is not a size between 1 byte and 1MiB`},
		{"max_header_size zero", "manager_request {\n\tmax_header_size 0\n}", `"0" is not a size`},
		{"max_header_size too big", "manager_request {\n\tmax_header_size 16GB\n}", `"16GB" is not a size`},
		{"keep_header empty", "manager_request {\n\tkeep_header\n}", `manager_request: keep_header: want at least one header field name`},
		{"fixed_error_body yes", "manager_request {\n\tfixed_error_body yes\n}", `manager_request: fixed_error_body: want on or off`},
		{"fixed_error_body empty", "manager_request {\n\tfixed_error_body\n}", `manager_request: fixed_error_body: want on or off`},
		{"block on a subdirective", "manager_request {\n\tallow GET /a {\n\t\tx\n\t}\n}", `manager_request: allow takes no block`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var m ManagerRequest
			err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestValidateNamesTheWrongField(t *testing.T) {
	allow := []AllowRule{{Path: "/secars/secars.dll", Methods: []string{"GET"}}}
	tests := []struct {
		name string
		m    ManagerRequest
		want string
	}{
		{"no allow", ManagerRequest{}, "manager_request: allow: at least one path and its methods are required"},
		{"allow path escaped", ManagerRequest{Allow: []AllowRule{{Path: "/secars/secars%2edll", Methods: []string{"GET"}}}}, `manager_request: allow: "/secars/secars%2edll" is not a canonical path: write it decoded, as "/secars/secars.dll"`},
		{"allow path with dot segment", ManagerRequest{Allow: []AllowRule{{Path: "/secars/../x", Methods: []string{"GET"}}}}, `manager_request: allow: "/secars/../x" is not a canonical path: path: dot_segment`},
		{"allow path with inner star", ManagerRequest{Allow: []AllowRule{{Path: "/content*", Methods: []string{"GET"}}}}, `reserved_character`},
		{"allow path trailing slash", ManagerRequest{Allow: []AllowRule{{Path: "/content/", Methods: []string{"GET"}}}}, `empty_segment`},
		{"allow relative path", ManagerRequest{Allow: []AllowRule{{Path: "secars", Methods: []string{"GET"}}}}, `request_target`},
		{"allow without methods", ManagerRequest{Allow: []AllowRule{{Path: "/a"}}}, `manager_request: allow: "/a": at least one method is required`},
		{"allow lower-case method", ManagerRequest{Allow: []AllowRule{{Path: "/a", Methods: []string{"Get"}}}}, `manager_request: allow: "/a": method "Get" is not an upper-case name`},
		{"allow two spellings", ManagerRequest{Allow: []AllowRule{{Path: "/a", Methods: []string{"GET"}}, {Path: "/A", Methods: []string{"POST"}}}}, `manager_request: allow: "/a" and "/A" are one path spelled two ways`},
		{"decision key with space", ManagerRequest{Allow: allow, DecisionKeys: []string{"host id"}}, `manager_request: decision_keys: "host id" is not a plain query key`},
		{"decision key twice", ManagerRequest{Allow: allow, DecisionKeys: []string{"hostid", "HostId"}}, `manager_request: decision_keys: "HostId" is listed twice`},
		{"too many decision keys", ManagerRequest{Allow: allow, DecisionKeys: manyKeys(65)}, `manager_request: decision_keys: 65 keys, at most 64`},
		{"negative header size", ManagerRequest{Allow: allow, MaxHeaderSize: -1}, `manager_request: max_header_size: -1 is negative`},
		{"keep a header never dropped", ManagerRequest{Allow: allow, KeepHeaders: []string{"Content-Type"}}, `manager_request: keep_header: "Content-Type" is not dropped by default`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.m.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestValidateAcceptsKeepingAnyAspNetHeaderAndRootPrefix(t *testing.T) {
	m := ManagerRequest{
		Allow:       []AllowRule{{Path: "/*", Methods: []string{"GET"}}, {Path: "/a", Methods: []string{"GET"}}, {Path: "/a", Methods: []string{"POST"}}},
		KeepHeaders: []string{"x-aspnet-version", "X-AspNet-Custom", "set-cookie"},
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
}

func manyKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "k" + strings.Repeat("x", i)
	}
	return keys
}

func TestCaddyfileOrdersManagerRequestBeforeEveryOtherHandler(t *testing.T) {
	input := `:8080 {
	rewrite /old /secars/secars.dll
	request_header X-A 1
	tracing
	respond "ok"
	manager_request {
		allow GET /secars/secars.dll
	}
}
`
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	js := string(out)
	first := strings.Index(js, `"handler":"`)
	if first < 0 || !strings.HasPrefix(js[first:], `"handler":"manager_request"`) {
		t.Fatalf("the first handler is not manager_request:\n%s", js)
	}
}
