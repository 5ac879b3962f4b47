package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// One instance per set of listeners. Caddy binds its listeners with
// SO_REUSEPORT (so a reload can bind the new configuration's sockets while
// the old ones still serve), which also lets a second `legacygate run` of the
// same configuration bind the same ports and admin address without an error:
// the kernel then splits new connections between the two processes, and
// `legacygate reload` reaches one of them at random. `run` therefore checks,
// before Caddy starts, that no listener of its configuration is in use, and
// names the process that holds it.

const (
	allowSecondFlag = "allow-second-instance"
	allowSecondEnv  = "LEGACYGATE_ALLOW_SECOND_INSTANCE"
	// instancePath is the admin API route a running legacygate answers with
	// its instanceInfo, so a refused second start can name it.
	instancePath = "/legacygate/instance"
)

// instanceInfo is what a running legacygate says about itself.
type instanceInfo struct {
	PID     int       `json:"pid"`
	Config  string    `json:"config,omitempty"`
	Started time.Time `json:"started"`
	Version string    `json:"version"`
}

// self is this process's instanceInfo; Config is set by `run`.
var self = instanceInfo{PID: os.Getpid(), Started: time.Now().UTC()}

func init() {
	caddy.RegisterModule(instanceAdmin{})
}

// instanceAdmin serves GET /legacygate/instance on the admin API.
type instanceAdmin struct{}

// CaddyModule returns the Caddy module information.
func (instanceAdmin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.legacygate_instance",
		New: func() caddy.Module { return new(instanceAdmin) },
	}
}

// Routes returns the instance route.
func (instanceAdmin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: instancePath, Handler: caddy.AdminHandlerFunc(serveInstance)}}
}

func serveInstance(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed: only GET", r.Method)}
	}
	info := self
	info.Version = legacygateVersion()
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(info)
}

// guardRun adds the single-instance check to Caddy's run command.
func guardRun(cmd *cobra.Command) {
	cmd.Flags().Bool(allowSecondFlag, false,
		"Start even when another process already listens on this configuration's addresses (also "+allowSecondEnv+"=1)")
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		allow, _ := c.Flags().GetBool(allowSecondFlag)
		if allow || os.Getenv(allowSecondEnv) == "1" {
			if file, _ := c.Flags().GetString("config"); file != "" {
				self.Config, _ = filepath.Abs(file)
			}
			return run(c, args)
		}
		if err := checkSingleInstance(c); err != nil {
			c.SilenceUsage = true
			return err
		}
		return run(c, args)
	}
}

// checkSingleInstance loads the configuration as `run` will and refuses
// when one of its TCP listeners or its admin address is already bound.
func checkSingleInstance(c *cobra.Command) error {
	envfiles, _ := c.Flags().GetStringSlice("envfile")
	for _, f := range envfiles {
		if err := loadEnvFile(f); err != nil {
			return fmt.Errorf("--envfile %s: %w", f, err)
		}
	}
	configFlag, _ := c.Flags().GetString("config")
	adapterFlag, _ := c.Flags().GetString("adapter")
	resume, _ := c.Flags().GetBool("resume")

	var cfgJSON []byte
	if resume {
		cfgJSON, _ = os.ReadFile(caddy.ConfigAutosavePath)
	}
	if len(cfgJSON) == 0 {
		var file string
		var err error
		cfgJSON, file, _, err = caddycmd.LoadConfig(configFlag, adapterFlag)
		if err != nil {
			// run reports the configuration's error itself, in its words.
			return nil
		}
		if file != "" {
			if abs, err := filepath.Abs(file); err == nil {
				file = abs
			}
			self.Config = file
		}
	}
	admin, listeners, err := configAddresses(cfgJSON)
	if err != nil {
		return nil
	}
	var busy []string
	for _, addr := range append([]string{admin}, listeners...) {
		if addr == "" {
			continue
		}
		busy = append(busy, addressesInUse(addr)...)
	}
	if len(busy) == 0 {
		return nil
	}
	return fmt.Errorf(`another legacygate is already running on this configuration's addresses (%s in use): %s
Change its configuration with "legacygate reload --address %s --config …", or stop it first.
To run a second instance on purpose (the kernel then splits new connections between
the two), start with --%s or %s=1`,
		strings.Join(busy, ", "), describeInstance(admin), adminOrDefault(admin), allowSecondFlag, allowSecondEnv)
}

// configAddresses returns the admin address ("" when the admin endpoint is
// disabled) and every listener address of the HTTP app's servers.
func configAddresses(cfgJSON []byte) (admin string, listeners []string, err error) {
	var cfg struct {
		Admin *caddy.AdminConfig `json:"admin"`
		Apps  struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if len(cfgJSON) > 0 {
		if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
			return "", nil, fmt.Errorf("reading the configuration's addresses: %w", err)
		}
	}
	admin = caddy.DefaultAdminListen
	if cfg.Admin != nil {
		if cfg.Admin.Disabled {
			admin = ""
		} else if cfg.Admin.Listen != "" {
			admin = cfg.Admin.Listen
		}
	}
	for _, srv := range cfg.Apps.HTTP.Servers {
		listeners = append(listeners, srv.Listen...)
	}
	return admin, listeners, nil
}

// addressesInUse tries to bind each TCP address of addr without
// SO_REUSEPORT: the bind fails only when a socket already listens there.
// Other networks (unix sockets, file descriptors, UDP) and other errors
// (no permission for a low port) are left to run.
func addressesInUse(addr string) []string {
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil || !strings.HasPrefix(na.Network, "tcp") {
		return nil
	}
	var busy []string
	for _, one := range na.Expand() {
		hostPort := one.JoinHostPort(0)
		ln, err := net.Listen(na.Network, hostPort)
		if err == nil {
			_ = ln.Close()
			continue
		}
		if addrInUse(err) {
			busy = append(busy, hostPort)
		}
	}
	return busy
}

// describeInstance asks the admin API at admin who is running.
func describeInstance(admin string) string {
	if admin == "" {
		return "the running process could not be asked who it is (this configuration disables the admin endpoint)"
	}
	resp, err := caddycmd.AdminAPIRequest(admin, http.MethodGet, instancePath, nil, nil)
	if err != nil {
		return fmt.Sprintf("no admin API answered at %s (%v), so the process is not named", admin, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var info instanceInfo
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &info) != nil || info.PID == 0 {
		return fmt.Sprintf("the admin API at %s answers (status %d) but is not a legacygate that names itself (a stock Caddy?)", admin, resp.StatusCode)
	}
	text := "legacygate pid " + strconv.Itoa(info.PID) + ", admin API " + admin
	if info.Config != "" {
		text += ", config " + info.Config
	}
	if info.Version != "" {
		text += ", version " + info.Version
	}
	return text + ", running since " + info.Started.Format(time.RFC3339)
}

func adminOrDefault(admin string) string {
	if admin == "" {
		return caddy.DefaultAdminListen
	}
	return admin
}

// loadEnvFile sets the KEY=VALUE lines of file that are not set already,
// as `run --envfile` does, so the addresses checked are the ones run will
// use. Values spanning lines are not needed for addresses and are skipped.
func loadEnvFile(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok || key == "" || strings.ContainsAny(key, " \t") {
			continue
		}
		if v, _, found := strings.Cut(val, "#"); found {
			val = strings.TrimRight(v, " \t")
		}
		if len(val) >= 2 && (val[0] == '"' || val[0] == '\'') && val[len(val)-1] == val[0] {
			val = val[1 : len(val)-1]
		}
		if _, set := os.LookupEnv(key); !set {
			if err := os.Setenv(key, val); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return nil
}
