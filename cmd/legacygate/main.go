// Command legacygate is Caddy with the standard modules and legacygate's own,
// behind a command line that presents legacygate (cli.go).
package main

import (
	"os"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/legacygate/legacygate/caddymodule/standard"
)

func main() {
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}
