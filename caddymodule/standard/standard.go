// Package standard registers every legacygate Caddy module, as Caddy's
// modules/standard does for Caddy's own: a binary imports it for its
// side effects.
package standard

import (
	// legacygate's modules, commands and directives.
	_ "github.com/legacygate/legacygate/caddymodule/contentcache"
	_ "github.com/legacygate/legacygate/caddymodule/dashboard"
	_ "github.com/legacygate/legacygate/caddymodule/handover"
	_ "github.com/legacygate/legacygate/caddymodule/heartbeatlimit"
	_ "github.com/legacygate/legacygate/caddymodule/initcmd"
	_ "github.com/legacygate/legacygate/caddymodule/legacytls"
	_ "github.com/legacygate/legacygate/caddymodule/managerrequest"
	_ "github.com/legacygate/legacygate/caddymodule/packageguard"
	_ "github.com/legacygate/legacygate/caddymodule/policyguard"
	_ "github.com/legacygate/legacygate/caddymodule/redisstorage"
	_ "github.com/legacygate/legacygate/caddymodule/rotation"
	_ "github.com/legacygate/legacygate/caddymodule/xmlguard"
)
