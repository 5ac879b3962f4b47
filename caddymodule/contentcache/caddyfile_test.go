package contentcache

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfileReadsEverySubdirective(t *testing.T) {
	d := caddyfile.NewTestDispenser(`content_cache {
		dir /var/cache/legacygate
		max_disk 20GiB
		max_object 2GiB
		max_memory 128MiB
		max_memory_object 2MiB
		prefix /defs
		fetch_timeout 30m
	}`)
	var c ContentCache
	if err := c.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	want := ContentCache{Dir: "/var/cache/legacygate", MaxDisk: 20 << 30, MaxObject: 2 << 30, MaxMemory: 128 << 20,
		MaxMemoryObject: 2 << 20, Prefix: "/defs", FetchTimeout: caddy.Duration(30 * time.Minute)}
	if c != want {
		t.Fatalf("got %+v, want %+v", c, want)
	}
}

func TestUnmarshalCaddyfileRefusesBadInputNamingTheSubdirective(t *testing.T) {
	for input, want := range map[string]string{
		"content_cache {\n max_disk lots\n}":     "max_disk",
		"content_cache {\n dir\n}":               "dir",
		"content_cache {\n max_size 1MiB\n}":     `unknown subdirective "max_size"`,
		"content_cache extra":                    "wrong argument count",
		"content_cache {\n fetch_timeout x\n}":   "fetch_timeout",
		"content_cache {\n prefix /a /b\n}":      "prefix",
		"content_cache {\n max_memory -1MB\n}":   "max_memory",
		"content_cache {\n max_object 0\n}":      "max_object",
		"content_cache {\n max_memory_object\n}": "max_memory_object",
	} {
		var c ContentCache
		err := c.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error naming %s", input, err, want)
		}
	}
}
