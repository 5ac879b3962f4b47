package policyguard

import "github.com/caddyserver/caddy/v2"

// provisionLikeCaddy provisions m and then validates it, in the order
// Caddy does when it loads a module.
func provisionLikeCaddy(ctx caddy.Context, m interface {
	caddy.Provisioner
	caddy.Validator
}) error {
	if err := m.Provision(ctx); err != nil {
		return err
	}
	return m.Validate()
}
