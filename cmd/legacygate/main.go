// Command legacygate is Caddy with the standard modules and legacygate's own.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/legacygate/legacygate/caddymodule"
)

func main() {
	caddycmd.Main()
}
