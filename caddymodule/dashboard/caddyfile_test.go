package dashboard

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// TestCaddyfileOrdersTheDashboardAfterBasicAuth: written before basic_auth
// in a site, the page is still served only after authentication.
func TestCaddyfileOrdersTheDashboardAfterBasicAuth(t *testing.T) {
	input := `ops.example.com {
	legacygate_dashboard {
		allow_remote
		refresh 5s
		stragglers 50
	}
	basic_auth {
		operator $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG
	}
}
`
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	js := string(out)
	auth, page := strings.Index(js, `"handler":"authentication"`), strings.Index(js, `"handler":"legacygate_dashboard"`)
	if auth < 0 || page < auth {
		t.Fatalf("legacygate_dashboard is not after basic_auth:\n%s", js)
	}
	for _, want := range []string{`"allow_remote":true`, `"refresh":5000000000`, `"stragglers":50`} {
		if !strings.Contains(js, want) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, js)
		}
	}
}
