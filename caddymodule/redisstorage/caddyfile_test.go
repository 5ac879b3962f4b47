package redisstorage

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func TestCaddyfileReadsTheCommunityModulesSyntax(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"address", `redis {
			address 10.0.0.5:6380
			username gw
			password "s3cret"
			db 2
			key_prefix legacygate
			timeout 3
		}`, `{"address":["10.0.0.5:6380"],"username":"gw","password":"s3cret","db":2,"timeout":"3","key_prefix":"legacygate"}`},
		{"host and port, defaults spelled out as in the community README", `redis {
			host           127.0.0.1
			port           6379
			username       ""
			password       ""
			db             0
			timeout        5
			key_prefix     "caddy"
			encryption_key ""
			compression    false
			tls_enabled    false
			tls_insecure   false
			client_name    gw1
		}`, `{"host":["127.0.0.1"],"port":["6379"],"timeout":"5","key_prefix":"caddy","client_name":"gw1"}`},
		{"address as a block, tls", `redis {
			address {
				redis.internal:6379
			}
			tls
			tls_server_certs_path /etc/redis-ca.pem
			lock_ttl 20s
		}`, `{"address":["redis.internal:6379"],"tls_enabled":true,"tls_server_certs_path":"/etc/redis-ca.pem","lock_ttl":20000000000}`},
		{"tls_enabled true, tls_insecure", `redis {
			tls_enabled true
			tls_insecure true
		}`, `{"tls_enabled":true,"tls_insecure":true}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Storage
			if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input)); err != nil {
				t.Fatal(err)
			}
			got, err := json.Marshal(&s)
			if err != nil || string(got) != tt.want {
				t.Fatalf("JSON = %s, %v\nwant   %s", got, err, tt.want)
			}
		})
	}
}

func TestCaddyfileRefusesWhatThisStorageDoesNotDo(t *testing.T) {
	tests := []struct{ input, want string }{
		{`redis cluster { address a:1 }`, "only one Redis server"},
		{`redis { encryption_key 0123456789abcdef0123456789abcdef }`, "encryption_key is not supported"},
		{`redis { compression flate }`, "compression is not supported"},
		{`redis { master_name mymaster }`, "Sentinel is not supported"},
		{`redis { adress a:1 }`, `did you mean "address"`},
		{`redis { db two }`, "db:"},
		{`redis { tls maybe }`, "tls:"},
		{"redis {\n address\n}", "address: a value is needed"},
		{`redis { lock_ttl soon }`, "lock_ttl:"},
	}
	for _, tt := range tests {
		var s Storage
		err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error containing %q", tt.input, err, tt.want)
		}
	}
}

func TestGlobalStorageOptionAdaptsToThisModule(t *testing.T) {
	input := `{
		storage redis {
			address 127.0.0.1:6390
			key_prefix gw
		}
	}
	:8080 {
		respond ok
	}`
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatalf("adapt: %v (%v)", err, warnings)
	}
	var doc struct {
		Storage json.RawMessage `json:"storage"`
	}
	if err := json.Unmarshal(cfg, &doc); err != nil {
		t.Fatal(err)
	}
	if want := `{"address":["127.0.0.1:6390"],"key_prefix":"gw","module":"redis"}`; string(doc.Storage) != want {
		t.Fatalf("storage = %s, want %s", doc.Storage, want)
	}
}
