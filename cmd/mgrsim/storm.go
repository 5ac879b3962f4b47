package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/legacygate/legacygate/integration/bench"
)

func init() {
	register("storm", command{
		summary: "storm the gateway (and stock Caddy) with 10,000 heartbeating clients; check the manager stays at global_rate",
		run: func(args []string) int {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runStorm(ctx, args, os.Stdout, os.Stderr)
		},
	})
}

// runStorm exits 0 when the gateway sustained the goal, 3 when it did not,
// 1 when the run failed and 2 on a usage error.
func runStorm(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mgrsim storm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg     bench.StormConfig
		bins    binaries
		rates   string
		asJSON  bool
		verbose bool
	)
	fs.StringVar(&bins.legacygate, "legacygate", "", "legacygate binary (default: PATH, else built from the source tree)")
	fs.IntVar(&cfg.Clients, "clients", 10_000, "simulated clients")
	fs.IntVar(&cfg.Connections, "connections", 0, "keep-alive TLS connections carrying their heartbeats (default: one per client)")
	fs.StringVar(&rates, "rates", "3000", "offered heartbeats/s in total, one step each, comma-separated (e.g. 3000,4000,5000)")
	fs.DurationVar(&cfg.Duration, "duration", 20*time.Second, "each step's length, per target")
	fs.IntVar(&cfg.GlobalRate, "global-rate", 200, "the gateway's heartbeat_limit global_rate, per second")
	fs.DurationVar(&cfg.MaxWait, "max-wait", 2*time.Second, "the gateway's heartbeat_limit max_wait")
	fs.IntVar(&cfg.Goal, "goal", 3000, "heartbeats/s the gateway must sustain with every goal met")
	fs.DurationVar(&cfg.RejectP99, "reject-p99", 5*time.Millisecond, "the most a rejection's p99 latency may be")
	fs.BoolVar(&cfg.NoCaddy, "no-caddy", false, "leave stock Caddy out")
	fs.DurationVar(&cfg.Stall, "stall", 0, "freeze the gateway (SIGSTOP) this long once every --stall-every, as a long GC pause would (default: never)")
	fs.DurationVar(&cfg.StallEvery, "stall-every", 2*time.Second, "how often --stall freezes the gateway")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fs.BoolVar(&verbose, "v", false, "print progress")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mgrsim storm: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var err error
	if cfg.Rates, err = parseRates(rates); err != nil {
		fmt.Fprintln(stderr, "mgrsim storm:", err)
		return 2
	}
	dir, err := os.MkdirTemp("", "mgrsim-storm-")
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim storm:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := bins.resolve(dir, stderr, false); err != nil {
		fmt.Fprintln(stderr, "mgrsim storm:", err)
		return 1
	}
	cfg.Legacygate, cfg.Dir = bins.legacygate, dir
	if verbose {
		cfg.Log = stderr
	}
	rep, err := bench.RunStorm(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim storm:", err)
		return 1
	}
	if asJSON {
		if err := rep.JSON(stdout); err != nil {
			fmt.Fprintln(stderr, "mgrsim storm:", err)
			return 1
		}
	} else {
		rep.Print(stdout)
	}
	if !rep.Pass {
		return 3
	}
	return 0
}

// parseRates reads --rates: positive integers, comma-separated.
func parseRates(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("--rates %q: %q is not a positive number of heartbeats/s", s, f)
		}
		out = append(out, n)
	}
	return out, nil
}
