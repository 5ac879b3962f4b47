// Package redisstorage is caddy.storage.redis: Caddy storage (a
// certmagic.Storage with a distributed Locker) on one Redis server, so that
// gateways sharing it share certificates, generated keys and rotation
// progress. Its Caddyfile is that of the community module
// pberkel/caddy-storage-redis, for the options both have.
//
// It lives in its own package so that a binary built with xcaddy can pick
// another storage module instead.
package redisstorage

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bsm/redislock"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/legacygate/legacygate/caddymodule/internal/redispool"
)

func init() {
	caddy.RegisterModule(new(Storage))
}

const (
	defaultHost      = "127.0.0.1"
	defaultPort      = "6379"
	defaultKeyPrefix = "caddy"
	defaultTimeout   = 5 * time.Second
	defaultLockTTL   = 10 * time.Second
	minLockTTL       = 300 * time.Millisecond
)

// Storage is caddy.storage.redis. Every field is optional; the JSON names
// are the community module's.
type Storage struct {
	// Address is the Redis server as host:port. It overrides Host and
	// Port. One address: this module speaks to one server (Redis Cluster
	// and Sentinel are not supported).
	Address []string `json:"address,omitempty"`
	// Host is the server's host name or IP address. Default 127.0.0.1.
	Host []string `json:"host,omitempty"`
	// Port is the server's port. Default 6379.
	Port []string `json:"port,omitempty"`
	// Username for Redis ACLs (AUTH username password).
	Username string `json:"username,omitempty"`
	// Password for AUTH.
	Password string `json:"password,omitempty"`
	// DB is the logical database number (SELECT). Default 0.
	DB int `json:"db,omitempty"`
	// Timeout bounds connecting to Redis and each read and write: whole
	// seconds ("5", as the community module) or a duration ("1500ms").
	// Default 5 seconds. Provision also waits at most this long for a
	// Redis that does not answer yet.
	Timeout string `json:"timeout,omitempty"`
	// Prefix (key_prefix) starts every Redis key this storage writes. Default
	// "caddy". Gateways that act as one use the same prefix; different
	// deployments on one Redis use different ones.
	Prefix string `json:"key_prefix,omitempty"`
	// ClientName is the connection name shown by CLIENT LIST.
	ClientName string `json:"client_name,omitempty"`
	// TLSEnabled connects with TLS (1.2 or later), verifying the server's
	// certificate against the system roots or TLSServerCertsPEM/Path.
	TLSEnabled bool `json:"tls_enabled,omitempty"`
	// TLSInsecure skips verifying the server's certificate.
	TLSInsecure bool `json:"tls_insecure,omitempty"`
	// TLSServerCertsPEM are PEM certificates to trust for the server, in
	// place of the system roots.
	TLSServerCertsPEM string `json:"tls_server_certs_pem,omitempty"`
	// TLSServerCertsPath is a file of PEM certificates to trust for the
	// server, in place of the system roots.
	TLSServerCertsPath string `json:"tls_server_certs_path,omitempty"`
	// LockTTL is how long a lock lives unless its holder refreshes it (it
	// does, every third of it, while it holds it): the longest another
	// gateway waits after a holder died. Default 10s.
	LockTTL caddy.Duration `json:"lock_ttl,omitempty"`

	client  redis.UniversalClient
	locker  *redislock.Client
	poolKey string
	addr    string
	timeout time.Duration
	lockTTL time.Duration
	prefix  string
	logger  *zap.Logger
	metrics storageMetrics

	mu   *sync.Mutex
	held map[string]*heldLock
}

// CaddyModule returns the Caddy module information.
func (*Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.redis",
		New: func() caddy.Module { return new(Storage) },
	}
}

// prefixPattern keeps the prefix one Redis key segment an operator can
// type in redis-cli.
var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// Provision checks the configuration, naming the bad field, then connects.
// A Redis that does not answer is retried until Timeout: then Provision
// fails, so a gateway does not start (or a reload is refused and the
// running configuration stays) without the storage its certificates and
// keys are in.
func (s *Storage) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	m, err := registerMetrics(ctx.GetMetricsRegistry())
	if err != nil {
		return fmt.Errorf("caddy.storage.redis: %w", err)
	}
	s.metrics = m
	opts, err := s.options()
	if err != nil {
		return fmt.Errorf("caddy.storage.redis: %w", err)
	}
	s.mu, s.held = new(sync.Mutex), map[string]*heldLock{}
	s.addr = opts.Addrs[0]
	s.client = redispool.Acquire(s.poolKey, func() redis.UniversalClient { return redis.NewUniversalClient(opts) })
	s.locker = redislock.New(s.client)
	if err := s.waitReachable(ctx, opts.Addrs[0]); err != nil {
		return fmt.Errorf("caddy.storage.redis: %w", err)
	}
	s.logger.Info("redis storage ready", zap.String("address", opts.Addrs[0]),
		zap.Int("db", s.DB), zap.String("key_prefix", s.prefix), zap.Bool("tls", opts.TLSConfig != nil))
	return nil
}

// options turns the configuration into the client's, after replacing
// runtime placeholders ({env.REDIS_PASSWORD}) in the string fields.
func (s *Storage) options() (*redis.UniversalOptions, error) {
	repl := caddy.NewReplacer()
	addr, err := s.address(repl)
	if err != nil {
		return nil, err
	}
	s.timeout = defaultTimeout
	if t := repl.ReplaceAll(s.Timeout, ""); t != "" {
		if s.timeout, err = parseTimeout(t); err != nil {
			return nil, fmt.Errorf("timeout: %w", err)
		}
	}
	s.lockTTL = defaultLockTTL
	if s.LockTTL != 0 {
		s.lockTTL = time.Duration(s.LockTTL)
	}
	if s.lockTTL < minLockTTL {
		return nil, fmt.Errorf("lock_ttl: %s is below %s", s.lockTTL, minLockTTL)
	}
	if s.DB < 0 {
		return nil, fmt.Errorf("db: %d is negative", s.DB)
	}
	s.prefix = repl.ReplaceAll(s.Prefix, "")
	if s.Prefix == "" {
		s.prefix = defaultKeyPrefix
	}
	if !prefixPattern.MatchString(s.prefix) {
		return nil, fmt.Errorf("key_prefix: %q is not letters, digits, '.', '_' or '-'", s.prefix)
	}
	opts := &redis.UniversalOptions{
		Addrs:        []string{addr},
		Username:     repl.ReplaceAll(s.Username, ""),
		Password:     repl.ReplaceAll(s.Password, ""),
		DB:           s.DB,
		ClientName:   repl.ReplaceAll(s.ClientName, ""),
		DialTimeout:  s.timeout,
		ReadTimeout:  s.timeout,
		WriteTimeout: s.timeout,
		// One attempt per call: the callers (certmagic, the rotation
		// loop) retry at their own pace and count the failures.
		MaxRetries: -1,
	}
	if opts.TLSConfig, err = s.tlsConfig(repl, addr); err != nil {
		return nil, err
	}
	// Every setting that makes a connection different.
	s.poolKey = fmt.Sprintf("storage|%q|%d|%q|%q|%q|%s|%t|%t|%q|%q", addr, opts.DB, opts.Username, opts.Password,
		opts.ClientName, s.timeout, s.TLSEnabled, s.TLSInsecure, s.TLSServerCertsPEM, s.TLSServerCertsPath)
	return opts, nil
}

// address is Address, or Host and Port.
func (s *Storage) address(repl *caddy.Replacer) (string, error) {
	if len(s.Address) > 1 {
		return "", fmt.Errorf("address: %d addresses given; this storage speaks to one Redis server (cluster and sentinel are not supported)", len(s.Address))
	}
	if len(s.Address) == 1 {
		a := repl.ReplaceAll(s.Address[0], "")
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return "", fmt.Errorf("address: %q is not host:port", a)
		}
		if _, err := parsePort(port); err != nil {
			return "", fmt.Errorf("address: %q: %w", a, err)
		}
		return net.JoinHostPort(host, port), nil
	}
	if len(s.Host) > 1 || len(s.Port) > 1 {
		return "", errors.New("host, port: one host and one port; this storage speaks to one Redis server")
	}
	host, port := defaultHost, defaultPort
	if len(s.Host) == 1 {
		host = repl.ReplaceAll(s.Host[0], "")
	}
	if len(s.Port) == 1 {
		port = repl.ReplaceAll(s.Port[0], "")
	}
	if host == "" || strings.ContainsAny(host, "/ ") {
		return "", fmt.Errorf("host: %q is not a host name or IP address", host)
	}
	if _, err := parsePort(port); err != nil {
		return "", fmt.Errorf("port: %w", err)
	}
	return net.JoinHostPort(host, port), nil
}

func parsePort(p string) (int, error) {
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", p)
	}
	return n, nil
}

// parseTimeout reads whole seconds (the community module's form) or a
// duration.
func parseTimeout(t string) (time.Duration, error) {
	var d time.Duration
	if n, err := strconv.Atoi(t); err == nil {
		d = time.Duration(n) * time.Second
	} else if d, err = caddy.ParseDuration(t); err != nil {
		return 0, fmt.Errorf("%q is neither whole seconds nor a duration", t)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q must be positive", t)
	}
	return d, nil
}

func (s *Storage) tlsConfig(repl *caddy.Replacer, addr string) (*tls.Config, error) {
	pemText := repl.ReplaceAll(s.TLSServerCertsPEM, "")
	pemPath := repl.ReplaceAll(s.TLSServerCertsPath, "")
	if !s.TLSEnabled {
		if s.TLSInsecure || pemText != "" || pemPath != "" {
			return nil, errors.New("tls_insecure, tls_server_certs_pem, tls_server_certs_path: need tls_enabled")
		}
		return nil, nil
	}
	host, _, _ := net.SplitHostPort(addr)
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host, InsecureSkipVerify: s.TLSInsecure}
	if pemText == "" && pemPath == "" {
		return cfg, nil
	}
	cfg.RootCAs = x509.NewCertPool()
	if pemText != "" && !cfg.RootCAs.AppendCertsFromPEM([]byte(pemText)) {
		return nil, errors.New("tls_server_certs_pem: no PEM certificate found")
	}
	if pemPath != "" {
		data, err := os.ReadFile(pemPath)
		if err != nil {
			return nil, fmt.Errorf("tls_server_certs_path: %w", err)
		}
		if !cfg.RootCAs.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("tls_server_certs_path: no PEM certificate found in %s", pemPath)
		}
	}
	return cfg, nil
}

// waitReachable pings until Redis answers or Timeout passes, logging the
// first failure once, so that a gateway started with its Redis (a boot)
// waits a little instead of failing at once.
func (s *Storage) waitReachable(ctx context.Context, addr string) error {
	deadline := time.Now().Add(s.timeout)
	logged := false
	for {
		pctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := s.client.Ping(pctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("address %s: Redis did not answer within timeout (%s): %w", addr, s.timeout, err)
		}
		if !logged {
			s.logger.Warn("redis storage: Redis does not answer yet; retrying until timeout",
				zap.String("address", addr), zap.Duration("timeout", s.timeout), zap.Error(err))
			logged = true
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Cleanup releases the shared connection, closed a little later if no
// other configuration uses it, so that modules cleaned up after this one
// (the legacygate app's final save) still reach Redis. Locks still held
// are left to their holders' Unlock.
func (s *Storage) Cleanup() error {
	if s.client != nil {
		redispool.Release(s.poolKey)
	}
	return nil
}

// CertMagicStorage returns the storage itself.
func (s *Storage) CertMagicStorage() (certmagic.Storage, error) { return s, nil }

// RedisClient is the connection, for other modules that keep their own
// state in the same Redis (type-assert the storage to
// interface{ RedisClient() redis.UniversalClient; KeyPrefix() string }).
// It stays open for the configuration's life and a little longer.
func (s *Storage) RedisClient() redis.UniversalClient { return s.client }

// KeyPrefix is the configured prefix. This storage's keys are
// "<prefix>/<storage key>" (files), "<prefix>:index:<dir>" (directory
// index) and "<prefix>:lock:<name>" (locks); another module keeps its keys
// under "<prefix>:<module>:".
func (s *Storage) KeyPrefix() string { return s.prefix }

// Interface guards.
var (
	_ caddy.Provisioner      = (*Storage)(nil)
	_ caddy.CleanerUpper     = (*Storage)(nil)
	_ caddy.StorageConverter = (*Storage)(nil)
	_ certmagic.Storage      = (*Storage)(nil)
	_ certmagic.TryLocker    = (*Storage)(nil)
)
