// Package demo is `legacygate demo`: an emulated legacy manager and the
// gateway in front of it, on loopback, with a narrated series of requests
// that shows what each side did. It lives under integration/ because it
// drives the emulators; cmd/legacygate registers it.
package demo

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// The demo's gateway is this process's Caddy: it needs the standard
	// modules (and the Caddyfile adapter) and legacygate's own.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/legacygate/legacygate/caddymodule/standard"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "demo",
		Usage: "[--once] [--dir DIR] [--flavor sepm|checkpoint|policyserver]",
		Short: "Runs an emulated legacy manager and the gateway on loopback and shows what happens",
		Long: `
Generates keys and a configuration in a temporary folder (or --dir), starts an
emulated SEPM-style manager that speaks only TLS 1.0 with a SHA-1 self-signed
certificate, starts the gateway in front of it on 127.0.0.1, sends requests
through it and prints what happened on each side.

Then it tells the story with two fleets of 1,000 simulated clients, one
straight at a second emulated manager and one through the gateway (20% of
them on the plain listener): the manager imports its next key (pinned in the
gateway beforehand), then the gateway's rotation window moves every client to
its next signing key and off plaintext. It prints the phases as measured and
a side-by-side table of the fleets' summaries.

With --once it exits when done: 0 when every step behaved as expected and the
story showed clients orphaned straight at the manager, none through the
gateway, and every gateway client confirmed by the window; 1 otherwise.
Without it, it keeps serving and prints the gateway's URL until Ctrl-C.

--flavor checkpoint runs a Check Point-style manager (TLS 1.0, SHA-1, packages
with detached CMS signatures) behind examples/checkpoint.Caddyfile's setup;
--flavor policyserver a PolicyServer-style SOAP manager on plain HTTP behind
examples/policyserver.Caddyfile's.`,
		Flags: func() *flag.FlagSet {
			fs := flag.NewFlagSet("demo", flag.ExitOnError)
			fs.Bool("once", false, "exit after the scripted steps (status 0 when all behaved)")
			fs.String("dir", "", "folder for keys, certificates and config (default: a new temporary folder, removed at exit)")
			fs.String("flavor", "sepm", "manager to emulate: sepm, checkpoint or policyserver")
			return fs
		}(),
		Func: func(fl caddycmd.Flags) (int, error) {
			if flavor := fl.String("flavor"); flavor != "sepm" {
				return runFlavor(flavor, fl.Bool("once"), fl.String("dir"))
			}
			return run(fl.Bool("once"), fl.String("dir"))
		},
	})
}

func run(once bool, dir string) (int, error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	d, err := setup(dir, os.Stdout)
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
	if once {
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
