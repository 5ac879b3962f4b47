package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/legacygate/legacygate/integration/fleet"
)

func init() {
	register("clients", command{
		summary: "run a simulated client fleet and print a JSON summary (online, degraded, orphaned…)",
		run: func(args []string) int {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runClients(ctx, args, os.Stdout, os.Stderr)
		},
	})
}

// clientsOptions are the flags of `mgrsim clients` beyond fleet.Config.
type clientsOptions struct {
	duration     time.Duration
	progress     time.Duration
	failOrphaned bool
}

// clientsFlags parses the flags into a fleet configuration.
func clientsFlags(args []string, stderr io.Writer) (fleet.Config, clientsOptions, error) {
	fs := flag.NewFlagSet("mgrsim clients", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg                           fleet.Config
		opt                           clientsOptions
		sylinkFile, trustFile, caFile string
		servers, kcs                  string
		seed                          uint64
	)
	fs.StringVar(&cfg.Flavor, "flavor", fleet.FlavorSEPM, "manager protocol: sepm, checkpoint or policyserver")
	fs.IntVar(&cfg.Count, "count", 100, "number of simulated clients")
	fs.StringVar(&sylinkFile, "sylink", "", "SyLink.xml the clients start with (server list, ports, <ServerCertificate>)")
	fs.StringVar(&servers, "server", "", "instead of --sylink: comma-separated https://host:port or http://host:port, one priority block, trusting --trust")
	fs.StringVar(&trustFile, "trust", "", "PEM or DER signing certificate trusted for servers without <ServerCertificate> (checkpoint: the package signer; policyserver: none)")
	fs.StringVar(&caFile, "ca", "", "PEM roots for servers with HttpsVerifyCA=\"1\" (default: system roots)")
	fs.DurationVar(&cfg.Interval, "interval", 0, "heartbeat interval (default: the SyLink's PushHeartbeatSeconds, else 5m)")
	fs.DurationVar(&cfg.Randomize, "randomize", 0, "random extra 0..D added to each interval (default with --interval unset: the SyLink's RandomizationRange)")
	fs.StringVar(&cfg.TLSMax, "tls-max", fleet.TLS12, "TLS ceiling of the clients: 1.0 (XP-era, CBC suites, RSA key exchange) or 1.2")
	fs.Float64Var(&cfg.TLS10Share, "tls10-share", 0, "share 0..1 of clients with a TLS 1.0 ceiling whatever --tls-max says")
	fs.Float64Var(&cfg.PlaintextShare, "plaintext-share", 0, "share 0..1 of clients whose server list uses plain HTTP (HttpPort)")
	fs.DurationVar(&opt.duration, "duration", time.Minute, "how long to run; 0 runs until interrupted")
	fs.IntVar(&cfg.OrphanAfter, "orphan-after", 3, "K: heartbeats in a row with nothing usable that make a client orphaned")
	fs.IntVar(&cfg.Concurrency, "concurrency", 0, "workers, so most requests in flight and connections per server (default min(count, 128))")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Second, "timeout of each request")
	fs.Uint64Var(&seed, "seed", 1, "seed for which clients are plaintext/TLS 1.0 and for heartbeat jitter")
	fs.StringVar(&cfg.Group, "group", "Default Group", "group the clients register into")
	fs.BoolVar(&cfg.NewConnectionEach, "new-conn", false, "open a new connection (and TLS handshake) for every request")
	fs.IntVar(&cfg.LogBytes, "log-bytes", 0, "upload a log of this many bytes after each successful heartbeat (0: none)")
	fs.IntVar(&cfg.VerifyCache, "verify-cache", 1024, "verification verdicts remembered by (document hash, certificate); -1 verifies every download")
	fs.StringVar(&cfg.Wire, "wire", fleet.WireReadable, "sepm query format: readable, or real (POST ?h=<hex> keyed by the SyLink's Kcs, User-Agent Smc, HTTP/1.0, definitions downloads, a 0-60 s accelerated heartbeat after any error)")
	fs.IntVar(&cfg.NAT, "nat", 0, "with --wire real: put N clients behind each source address (127.0.0.2, 127.0.0.3, …)")
	fs.DurationVar(&cfg.StartSpread, "start-spread", 0, "spread the first heartbeats over 0..D instead of one interval (short: a check-in storm)")
	fs.StringVar(&kcs, "kcs", "", "with --server and --wire real: the Kcs the clients obfuscate queries with (the manager prints it)")
	fs.DurationVar(&opt.progress, "progress", 0, "print a summary line to stderr every D (0: only the final summary)")
	fs.BoolVar(&opt.failOrphaned, "fail-orphaned", false, "exit with status 3 if any client is orphaned at the end")
	if err := fs.Parse(args); err != nil {
		return cfg, opt, err
	}
	if fs.NArg() > 0 {
		return cfg, opt, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if opt.duration < 0 || opt.progress < 0 {
		return cfg, opt, errors.New("--duration and --progress must not be negative")
	}
	cfg.Seed = seed
	var err error
	if trustFile != "" {
		if cfg.Trust, err = readCertificate(trustFile); err != nil {
			return cfg, opt, fmt.Errorf("--trust: %w", err)
		}
	}
	if caFile != "" {
		if cfg.RootCAs, err = readRoots(caFile); err != nil {
			return cfg, opt, fmt.Errorf("--ca: %w", err)
		}
	}
	switch {
	case sylinkFile != "" && servers != "":
		return cfg, opt, errors.New("--sylink and --server: give one of them")
	case sylinkFile != "":
		if cfg.SyLink, err = os.ReadFile(sylinkFile); err != nil {
			return cfg, opt, fmt.Errorf("--sylink: %w", err)
		}
	case servers != "":
		if cfg.SyLink, err = sylinkFor(servers, cfg.Trust, cfg.Flavor != fleet.FlavorPolicyServer, kcs); err != nil {
			return cfg, opt, fmt.Errorf("--server: %w", err)
		}
	default:
		return cfg, opt, errors.New("--sylink FILE or --server URL is required")
	}
	return cfg, opt, nil
}

// sylinkFor builds a one-block SyLink from https:// and http:// URLs; an
// https and an http URL of the same host make one server with both ports,
// as SEPM lists itself. Without verify (PolicyServer signs nothing) no
// certificate is needed.
func sylinkFor(list string, trust *x509.Certificate, verify bool, kcs string) ([]byte, error) {
	if verify && trust == nil {
		return nil, errors.New("needs --trust: the clients must trust a signing certificate")
	}
	block := fleet.PriorityBlock{Name: "Priority1"}
	byHost := map[string]int{}
	for _, raw := range strings.Split(list, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", raw, err)
		}
		host, portText, err := net.SplitHostPort(u.Host)
		if err != nil {
			return nil, fmt.Errorf("%q: want scheme://host:port: %w", raw, err)
		}
		port, err := strconv.Atoi(portText)
		if err != nil || port < 1 || port > 65535 {
			return nil, fmt.Errorf("%q: bad port %q", raw, portText)
		}
		i, seen := byHost[host]
		if !seen {
			i = len(block.Servers)
			byHost[host] = i
			block.Servers = append(block.Servers, fleet.Server{Address: host, VerifySignatures: verify, Cert: trust})
		}
		srv := &block.Servers[i]
		switch u.Scheme {
		case "https":
			srv.HTTPSPort = port
		case "http":
			srv.HTTPPort = port
		default:
			return nil, fmt.Errorf("%q: scheme must be https or http", raw)
		}
	}
	return fleet.BuildSyLink(&fleet.Settings{Blocks: []fleet.PriorityBlock{block}, KCS: kcs})
}

// readCertificate reads one certificate, PEM or DER.
func readCertificate(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if b, _ := pem.Decode(data); b != nil {
		data = b.Bytes
	}
	c, err := x509.ParseCertificate(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func readRoots(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, nil
}

// runClients runs the fleet until --duration passes or ctx ends, and
// prints the summary to stdout as one JSON object.
func runClients(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, opt, err := clientsFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim clients:", err)
		return 2
	}
	f, err := fleet.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim clients:", err)
		return 2
	}
	if opt.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opt.duration)
		defer cancel()
	}
	fmt.Fprintf(stderr, "mgrsim clients: %d clients, heartbeat %v, orphaned after %d\n", cfg.Count, f.Interval(), cfg.OrphanAfter)
	var progress sync.WaitGroup
	if opt.progress > 0 {
		progress.Go(func() { printProgress(ctx, f, opt.progress, stderr) })
	}
	s := f.Run(ctx)
	progress.Wait()
	out, err := json.Marshal(s)
	if err != nil {
		fmt.Fprintln(stderr, "mgrsim clients:", err)
		return 1
	}
	fmt.Fprintln(stdout, string(out))
	if opt.failOrphaned && s.Orphaned > 0 {
		return 3
	}
	return 0
}

func printProgress(ctx context.Context, f *fleet.Fleet, every time.Duration, w io.Writer) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if line, err := json.Marshal(f.Summary()); err == nil {
				fmt.Fprintln(w, string(line))
			}
		}
	}
}
