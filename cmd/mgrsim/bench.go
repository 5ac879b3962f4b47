package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/legacygate/legacygate/integration/bench"
)

func init() {
	register("bench", command{
		summary: "measure legacygate against stock Caddy, nginx and HAProxy on loopback (requests/s, latency, CPU, RSS)",
		run: func(args []string) int {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runBench(ctx, args, os.Stdout, os.Stderr)
		},
	})
	register("soak", command{
		summary: "soak one gateway with a large fleet and a spoofed-key flood; plot its RSS",
		run: func(args []string) int {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runSoak(ctx, args, os.Stdout, os.Stderr)
		},
	})
}

// binaries are the flags that name the programs under test.
type binaries struct {
	legacygate, nginx, haproxy string
	noNginx, noHAProxy         bool
}

func (b *binaries) flags(fs *flag.FlagSet) {
	fs.StringVar(&b.legacygate, "legacygate", "", "legacygate binary (default: PATH, else built from the source tree)")
	fs.StringVar(&b.nginx, "nginx", "", "nginx binary (default: PATH or sbin; installed with apt-get when missing and run as root)")
	fs.BoolVar(&b.noNginx, "no-nginx", false, "leave nginx out")
	fs.StringVar(&b.haproxy, "haproxy", "", "haproxy binary (default: PATH or sbin; installed with apt-get when missing and run as root)")
	fs.BoolVar(&b.noHAProxy, "no-haproxy", false, "leave HAProxy out")
}

// resolve finds the legacygate binary and, when withBaselines is set, nginx
// and HAProxy (unless left out). Without it, only legacygate is looked up.
func (b *binaries) resolve(dir string, stderr io.Writer, withBaselines bool) error {
	var err error
	if b.legacygate == "" {
		b.legacygate, err = bench.FindLegacygate(dir)
	} else {
		b.legacygate, err = bench.ResolveBinary(b.legacygate)
	}
	if err != nil {
		return err
	}
	baselines := []struct {
		bin  *string
		skip bool
		find func(io.Writer) (string, error)
	}{
		{&b.nginx, b.noNginx, bench.FindNginx},
		{&b.haproxy, b.noHAProxy, bench.FindHAProxy},
	}
	for _, bl := range baselines {
		switch {
		case bl.skip:
			*bl.bin = ""
		case withBaselines && *bl.bin == "":
			if *bl.bin, err = bl.find(stderr); err != nil {
				return err
			}
		}
	}
	return nil
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mgrsim bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg     bench.Config
		bins    binaries
		paths   string
		cpus    string
		asJSON  bool
		goOnly  bool
		verbose bool
	)
	bins.flags(fs)
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "each target's share of a round")
	fs.IntVar(&cfg.Rounds, "rounds", 3, "rounds per path (each target once per round, in turn)")
	fs.IntVar(&cfg.Connections, "connections", 32, "concurrent connections")
	fs.StringVar(&paths, "paths", strings.Join(bench.AllPaths, ","), "paths to measure: "+strings.Join(bench.AllPaths, ","))
	fs.StringVar(&cpus, "target-cpus", "", "run the targets on these CPUs only (e.g. 0 or 0,1) and the load generator and managers on the others (Linux; default: all share every CPU)")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fs.BoolVar(&goOnly, "go-generator", false, "use the Go load generator even when wrk is installed")
	fs.BoolVar(&verbose, "v", false, "print each round")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mgrsim bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	for _, p := range strings.Split(paths, ",") {
		cfg.Paths = append(cfg.Paths, strings.TrimSpace(p))
	}
	targetCPUs, err := parseCPUs(cpus)
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim bench:", err)
		return 2
	}
	cfg.TargetCPUs = targetCPUs
	dir, err := os.MkdirTemp("", "mgrsim-bench-")
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim bench:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := bins.resolve(dir, stderr, true); err != nil {
		fmt.Fprintln(stderr, "mgrsim bench:", err)
		return 1
	}
	cfg.Legacygate, cfg.Nginx, cfg.HAProxy, cfg.Dir = bins.legacygate, bins.nginx, bins.haproxy, dir
	if !goOnly {
		if wrk, err := exec.LookPath("wrk"); err == nil {
			cfg.Wrk = wrk
		}
	}
	if verbose {
		cfg.Log = stderr
	}
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim bench:", err)
		return 1
	}
	if asJSON {
		if err := rep.JSON(stdout); err != nil {
			fmt.Fprintln(stderr, "mgrsim bench:", err)
			return 1
		}
		return 0
	}
	rep.Print(stdout)
	return 0
}

func runSoak(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mgrsim soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg    bench.SoakConfig
		bins   binaries
		asJSON bool
	)
	fs.StringVar(&bins.legacygate, "legacygate", "", "legacygate binary (default: PATH, else built from the source tree)")
	fs.IntVar(&cfg.Clients, "clients", 100_000, "simulated clients")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Minute, "how long to soak")
	fs.DurationVar(&cfg.Interval, "interval", 2*time.Minute, "heartbeat interval (plus a random 0..interval)")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "warm-up excluded from the verdict (default: a third of --duration)")
	fs.DurationVar(&cfg.Sample, "sample", 5*time.Second, "time between samples")
	fs.IntVar(&cfg.FloodRate, "flood-rate", 200, "spoofed-key heartbeats per second (0: no flood)")
	fs.IntVar(&cfg.MaxKeys, "max-keys", 120_000, "heartbeat_limit max_clients")
	fs.IntVar(&cfg.ProfileSize, "profile-size", 16<<10, "size of the manager's signed policy in bytes")
	fs.IntVar(&cfg.Concurrency, "concurrency", 256, "fleet workers (requests in flight)")
	fs.StringVar(&cfg.PNG, "png", "soak.png", "where to draw the plot (empty: no plot)")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mgrsim soak: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	dir, err := os.MkdirTemp("", "mgrsim-soak-")
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim soak:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := bins.resolve(dir, stderr, false); err != nil {
		fmt.Fprintln(stderr, "mgrsim soak:", err)
		return 1
	}
	cfg.Legacygate, cfg.Dir, cfg.Log = bins.legacygate, dir, stderr
	rep, err := bench.Soak(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim soak:", err)
		return 1
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "mgrsim soak:", err)
			return 1
		}
	} else {
		rep.Print(stdout)
	}
	if !rep.Flat {
		return 3
	}
	return 0
}

// parseCPUs reads --target-cpus: CPU numbers separated by commas.
func parseCPUs(list string) ([]int, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	var cpus []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("--target-cpus %q: %q is not a CPU number (want e.g. 0 or 0,1)", list, f)
		}
		if slices.Contains(cpus, n) {
			return nil, fmt.Errorf("--target-cpus %q: CPU %d named twice", list, n)
		}
		cpus = append(cpus, n)
	}
	return cpus, nil
}
