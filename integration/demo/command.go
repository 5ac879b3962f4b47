// Package demo is `mgrsim demo`: an emulated legacy manager and a legacygate
// gateway in front of it, on loopback, with a narrated series of requests
// that shows what each side did. The gateway is a `legacygate run` process
// of the binary it is given, reloaded with `legacygate reload`, so the
// production binary links none of the emulators.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Options are what `mgrsim demo` is asked to do.
type Options struct {
	// Legacygate is the legacygate binary that runs the gateway.
	Legacygate string
	// Dir is the folder for keys, certificates and configuration; empty: a
	// new temporary folder, removed at the end.
	Dir string
	// Flavor is the manager to emulate: sepm (the default when empty),
	// checkpoint or policyserver.
	Flavor string
	// ConfigDir holds Caddyfile.example and examples/, the configurations
	// the gateway runs; empty: DefaultConfigDir.
	ConfigDir string
	// Once makes Run return when the script is done instead of serving
	// until ctx ends.
	Once bool
	// Out receives the narration.
	Out io.Writer
}

// CheckFlavor returns an error naming --flavor unless flavor is one the
// demo runs.
func CheckFlavor(flavor string) error {
	switch flavor {
	case flavorSEPM, flavorCheckpoint, flavorPolicyServer:
		return nil
	}
	return fmt.Errorf("--flavor: %q is not one of %s, %s, %s", flavor, flavorSEPM, flavorCheckpoint, flavorPolicyServer)
}

func (o Options) configDir() string {
	if o.ConfigDir == "" {
		return DefaultConfigDir()
	}
	return o.ConfigDir
}

// Run runs the demo. With o.Once it returns 0 when every step behaved as
// expected (and, for sepm, the story showed clients orphaned straight at
// the manager, none through the gateway, and every gateway client confirmed
// by the window), 1 with the reason otherwise. Without it, it keeps the
// gateway serving until ctx is done.
func Run(ctx context.Context, o Options) (int, error) {
	if o.Flavor == "" {
		o.Flavor = flavorSEPM
	}
	if err := CheckFlavor(o.Flavor); err != nil {
		return 2, err
	}
	if o.Flavor != flavorSEPM {
		return runFlavor(ctx, o)
	}
	d, err := setup(o)
	if err != nil {
		return 1, err
	}
	defer d.close()

	failed := d.runSteps(ctx)
	r, storyErr := d.runStory(ctx, storyClients)
	if storyErr == nil {
		storyErr = r.ok()
	}
	if storyErr != nil {
		d.printf("\n[FAIL] %v\n", storyErr)
	}
	if o.Once {
		if failed > 0 {
			return 1, fmt.Errorf("%d demo step(s) did not behave as expected", failed)
		}
		if storyErr != nil {
			return 1, storyErr
		}
		return 0, nil
	}
	d.printf("\nThe gateway keeps serving at %s (manager at %s). Press Ctrl-C to stop.\n", d.gatewayURL, d.managerURL)
	<-ctx.Done()
	if errors.Is(ctx.Err(), context.Canceled) {
		d.printf("stopping\n")
	}
	return 0, nil
}

// runFlavor is Run for a flavor other than sepm.
func runFlavor(ctx context.Context, o Options) (int, error) {
	d, err := setupFlavor(o)
	if err != nil {
		return 1, err
	}
	defer d.close()
	failed := d.runSteps(ctx)
	if o.Once {
		if failed > 0 {
			return 1, fmt.Errorf("%d demo step(s) did not behave as expected", failed)
		}
		return 0, nil
	}
	fmt.Fprintf(d.out, "\nThe gateway keeps serving at %s (manager at %s). Press Ctrl-C to stop.\n", d.gatewayURL, d.managerURL())
	<-ctx.Done()
	fmt.Fprintf(d.out, "stopping\n")
	return 0, nil
}
