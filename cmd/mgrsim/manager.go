package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/legacygate/legacygate/integration/certs"
	"github.com/legacygate/legacygate/integration/manager"
)

func init() {
	register("manager", command{
		summary: "run an emulated manager (flavor sepm, checkpoint or policyserver); SIGHUP regenerates its key, SIGUSR1 imports the next one",
		run:     runManager,
	})
}

// managerFlags parses the manager subcommand's flags into a manager.Config.
func managerFlags(args []string, stderr io.Writer) (manager.Config, error) {
	fs := flag.NewFlagSet("mgrsim manager", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg                          manager.Config
		tlsMin, tlsMax, cert, cipher string
		regenerate                   bool
	)
	fs.StringVar(&cfg.Flavor, "flavor", "sepm", "manager flavor: "+fmt.Sprint(manager.Flavors()))
	fs.StringVar(&cfg.HTTPSAddr, "https", "127.0.0.1:8443", "HTTPS listener address (empty: none)")
	fs.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:8014", "plain HTTP listener address, also serving /admin/* to loopback (empty: none)")
	fs.StringVar(&tlsMin, "tls-min", "1.0", "lowest TLS version accepted: 1.0, 1.1, 1.2 or 1.3")
	fs.StringVar(&tlsMax, "tls-max", "1.2", "highest TLS version accepted: 1.0, 1.1, 1.2 or 1.3")
	fs.StringVar(&cipher, "ciphers", "legacy", "TLS 1.0-1.2 cipher suites: legacy, modern, rsa-kex, or comma-separated Go names")
	fs.StringVar(&cert, "cert", "modern", "certificate kind: modern, sha1, cn-only or expired")
	fs.StringVar(&cfg.CommonName, "cn", "sepm.legacygate.test", "common name of generated certificates")
	fs.StringVar(&cfg.Sign, "sign", manager.SignRSASHA256, "XML signature method: rsa-sha256 or rsa-sha1")
	fs.IntVar(&cfg.ProfileSize, "profile-size", 100<<10, "approximate size of the signed policy document, bytes")
	fs.Int64Var(&cfg.MaxLogBytes, "max-log-bytes", 300<<10, "largest log upload accepted, bytes")
	fs.IntVar(&cfg.HeartbeatSeconds, "heartbeat", 0, "heartbeat interval written into SyLink (or heartbeat answers), seconds; 0: the flavor's default (sepm 300, checkpoint 60)")
	fs.StringVar(&cfg.ServerAddress, "server-address", "", "host written into SyLink's server list (default: the listen IP)")
	fs.StringVar(&cfg.Dir, "dir", "", "directory to write tls.crt, tls.key, signing.crt and pin to, on start and each key change; a key pair already there is used again")
	fs.BoolVar(&regenerate, "regenerate", false, "with --dir: make a new key pair instead of using the one in --dir")
	fs.StringVar(&cfg.Wire, "wire", manager.WireReadable, "sepm query format: readable (?action=…&hostid=…) or real (POST ?h=<hex> keyed by the SyLink's KCS, User-Agent Smc, definitions at /content/{GUID}/{rev}/full.zip)")
	fs.Int64Var(&cfg.ContentSize, "content-size", 4<<20, "size in bytes of every definitions file served at /content/{GUID}/{rev}/{file}")
	fs.IntVar(&cfg.Capacity, "capacity", 0, "client requests a second the manager answers; above it 503 without Retry-After, as an overloaded IIS (0: unlimited)")
	fs.StringVar(&cfg.NextDir, "next", "", "directory with next.crt and next.key for import (created if absent)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if cfg.TLSMin, err = manager.ParseTLSVersion(tlsMin); err != nil {
		return cfg, fmt.Errorf("--tls-min: %w", err)
	}
	if cfg.TLSMax, err = manager.ParseTLSVersion(tlsMax); err != nil {
		return cfg, fmt.Errorf("--tls-max: %w", err)
	}
	if cfg.CipherSuites, err = manager.ParseCipherSuites(cipher); err != nil {
		return cfg, fmt.Errorf("--ciphers: %w", err)
	}
	if cfg.Cert, err = certs.ParseKind(cert); err != nil {
		return cfg, fmt.Errorf("--cert: %w", err)
	}
	if regenerate && cfg.Dir == "" {
		return cfg, errors.New("--regenerate: only with --dir (without it every start makes a new key)")
	}
	if cfg.Dir != "" {
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			return cfg, fmt.Errorf("--dir: %w", err)
		}
		if !regenerate {
			// A real manager keeps its key across restarts.
			pair, found, err := manager.LoadDir(cfg.Dir)
			if err != nil {
				return cfg, fmt.Errorf("--dir %s: %w (or start with --regenerate to replace them)", cfg.Dir, err)
			}
			if found {
				cfg.Initial = pair
			}
		}
	}
	return cfg, nil
}

func runManager(args []string) int {
	cfg, err := managerFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mgrsim manager:", err)
		return 2
	}
	cfg.Log = os.Stdout
	if cfg.Initial != nil {
		fmt.Printf("key pair: kept from %s (--regenerate makes a new one)\n", cfg.Dir)
	}
	m, err := manager.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mgrsim manager:", err)
		return 1
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := m.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "mgrsim manager:", err)
		return 1
	}
	defer m.Close()
	for sig := range sigs {
		switch sig {
		case syscall.SIGHUP:
			err = m.Regenerate()
		case syscall.SIGUSR1:
			err = m.Import()
		default:
			fmt.Println("manager: stopping on", sig)
			return 0
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "mgrsim manager:", err)
		}
	}
	return 0
}
