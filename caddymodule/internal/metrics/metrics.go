// Package metrics holds what every legacygate module needs to put its
// collectors on Caddy's metrics registry.
package metrics

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c on reg and returns the collector to use.
//
// Caddy gives every loaded configuration a fresh registry, and a module is
// provisioned again on every reload (sometimes while the old configuration is
// still running, sometimes twice in one configuration). Declare collectors once
// at package level and pass them here from Provision: the same collector
// registered twice on one registry is not an error, counts carry over from one
// configuration to the next, and a collector with the same name registered
// elsewhere is reused instead of failing the load.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("registering metrics: %w", err)
}
