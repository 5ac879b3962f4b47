package xmlguard

import "github.com/caddyserver/caddy/v2"

// provisionLikeCaddy provisions g and then validates it, in the order
// Caddy does when it loads the module.
func provisionLikeCaddy(ctx caddy.Context, g *XMLGuard) error {
	if err := g.Provision(ctx); err != nil {
		return err
	}
	return g.Validate()
}
