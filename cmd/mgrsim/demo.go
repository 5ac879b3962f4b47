package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/legacygate/legacygate/integration/bench"
	"github.com/legacygate/legacygate/integration/demo"
)

func init() {
	register("demo", command{
		summary: "run an emulated manager and a legacygate gateway in front of it on loopback, and narrate what happens",
		run: func(args []string) int {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, args, os.Stdout, os.Stderr)
		},
	})
}

const demoUsage = `usage: mgrsim demo [--once] [--dir DIR] [--flavor sepm|checkpoint|policyserver] [--legacygate PATH] [--config-dir DIR]

Generates keys in a temporary folder (or --dir), starts an emulated SEPM-style
manager that speaks only TLS 1.0 with a SHA-1 self-signed certificate, starts
a legacygate gateway (legacygate run) in front of it on 127.0.0.1 with
Caddyfile.example as shipped, sends requests through it and prints what
happened on each side.

The gateway runs the shipped files of the checkout (or --config-dir), with
their environment variables set and only the global options a test needs
added (admin endpoint, storage, log, loopback http_port and https_port); the
Caddyfile written into the folder shows exactly what ran.

Then it tells the story with two fleets of 1,000 simulated clients, one
straight at a second emulated manager and one through the gateway (20% of
them on the plain listener): the manager imports its next key (pinned in the
gateway beforehand), then the gateway's rotation window moves every client to
its next signing key and off plaintext (the gateway now runs
examples/rotation.Caddyfile). It prints the phases as measured and
a side-by-side table of the fleets' summaries.

With --once it exits when done: 0 when every step behaved as expected and the
story showed clients orphaned straight at the manager, none through the
gateway, and every gateway client confirmed by the window; 1 otherwise.
Without it, it keeps serving and prints the gateway's URL until Ctrl-C.

--flavor checkpoint runs a Check Point-style manager (TLS 1.0, SHA-1, packages
with detached CMS signatures) behind examples/checkpoint.Caddyfile;
--flavor policyserver a PolicyServer-style SOAP manager on plain HTTP behind
examples/policyserver.Caddyfile.

flags:
`

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mgrsim demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, demoUsage)
		fs.PrintDefaults()
	}
	opts := demo.Options{Out: stdout}
	fs.BoolVar(&opts.Once, "once", false, "exit after the scripted steps (status 0 when all behaved)")
	fs.StringVar(&opts.Dir, "dir", "", "folder for keys, certificates and config (default: a new temporary folder, removed at exit)")
	fs.StringVar(&opts.Flavor, "flavor", "sepm", "manager to emulate: sepm, checkpoint or policyserver")
	fs.StringVar(&opts.ConfigDir, "config-dir", "", "folder holding Caddyfile.example and examples/ (default: the root of the checkout mgrsim runs in)")
	fs.StringVar(&opts.Legacygate, "legacygate", "", "legacygate binary that runs the gateway (default: PATH, else built from the source tree)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mgrsim demo: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if err := demo.CheckFlavor(opts.Flavor); err != nil {
		fmt.Fprintln(stderr, "mgrsim demo:", err)
		return 2
	}
	if opts.Legacygate != "" {
		path, err := bench.ResolveBinary(opts.Legacygate)
		if err != nil {
			fmt.Fprintln(stderr, "mgrsim demo: --legacygate:", err)
			return 1
		}
		opts.Legacygate = path
	}
	if opts.Legacygate == "" {
		binDir, err := os.MkdirTemp("", "mgrsim-demo-")
		if err != nil {
			fmt.Fprintln(stderr, "mgrsim demo:", err)
			return 1
		}
		defer os.RemoveAll(binDir)
		if opts.Legacygate, err = bench.FindLegacygate(binDir); err != nil {
			fmt.Fprintln(stderr, "mgrsim demo:", err)
			return 1
		}
	}
	code, err := demo.Run(ctx, opts)
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim demo:", err)
	}
	return code
}
