package demo

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// The shipped configurations the demo runs, relative to the config folder
// (the module root): the demo adds only the global options a test harness
// needs (see demoConfig) and sets the files' environment variables.
const (
	configSEPM         = "Caddyfile.example"
	configRotation     = "examples/rotation.Caddyfile"
	configCheckpoint   = "examples/checkpoint.Caddyfile"
	configPolicyServer = "examples/policyserver.Caddyfile"
)

// DefaultConfigDir is where the shipped configurations are: the root of the
// module `go env GOMOD` names, else the current folder.
func DefaultConfigDir() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "."
	}
	return filepath.Dir(gomod)
}

// readShipped reads the shipped configuration name from configDir.
func readShipped(configDir, name string) (string, error) {
	file := filepath.Join(configDir, name)
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("reading the shipped configuration %s (run mgrsim demo from a legacygate checkout, or pass --config-dir): %w", file, err)
	}
	return string(b), nil
}

// demoConfig is shipped with the demo's global options (see demoConfig)
// and its log: the default log goes to gateway.log in JSON, inside the
// file's own `log default` block when it has one (Caddy refuses two).
func demoConfig(shipped, admin, dir string, httpPort, httpsPort int) (string, error) {
	output := fmt.Sprintf("\t\toutput file %s\n\t\tformat json\n", quote(filepath.Join(dir, "gateway.log")))
	globals := demoGlobals(admin, dir, httpPort, httpsPort)
	const defaultLog = "\n\tlog default {\n"
	if i := strings.Index(shipped, defaultLog); i >= 0 {
		at := i + len(defaultLog)
		shipped = shipped[:at] + output + shipped[at:]
	} else {
		globals += "\tlog {\n" + output + "\t}\n"
	}
	return withGlobals(shipped, globals)
}

// demoGlobals are the global options the demo adds on top of a shipped
// file, as integration/harness does for the end-to-end tests: an admin
// endpoint for `legacygate reload` and the rotation status, storage
// inside the demo folder, unprivileged loopback ports for the files'
// `http://` and `https://` sites, and no attempt to install Caddy's root.
func demoGlobals(admin, dir string, httpPort, httpsPort int) string {
	return fmt.Sprintf("\t# Added by mgrsim demo.\n"+
		"\tadmin %s\n\tpersist_config off\n\tskip_install_trust\n"+
		"\tstorage file_system %s\n\thttp_port %d\n\thttps_port %d\n",
		admin, quote(filepath.Join(dir, "caddy")), httpPort, httpsPort)
}

// withGlobals inserts globals at the top of the Caddyfile's global options
// block: its first token, after comments, is "{" alone on its line.
func withGlobals(caddyfile, globals string) (string, error) {
	lines := strings.SplitAfter(caddyfile, "\n")
	for i, line := range lines {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if trimmed == "{" {
			return strings.Join(lines[:i+1], "") + globals + strings.Join(lines[i+1:], ""), nil
		}
		break
	}
	return "", errors.New("no global options block at the top")
}

var envName = regexp.MustCompile(`\{\$([A-Za-z0-9_]+)`)

// configEnv is the environment a gateway process adapts caddyfile in: this
// process's, without any variable the file reads (so the file's defaults
// apply unless the demo sets it), plus vars.
func configEnv(caddyfile string, vars map[string]string) []string {
	read := map[string]bool{}
	for _, m := range envName.FindAllStringSubmatch(caddyfile, -1) {
		read[m[1]] = true
	}
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !read[name] {
			env = append(env, kv)
		}
	}
	for name, value := range vars {
		env = append(env, name+"="+value)
	}
	return env
}

// quote makes a file name one Caddyfile token: the files' {$VAR} are
// replaced as text before the Caddyfile is split into tokens.
func quote(path string) string {
	return `"` + strings.ReplaceAll(path, `"`, `\"`) + `"`
}

// quoteAll is quote for a list of file names, one token each.
func quoteAll(paths ...string) string {
	q := make([]string, len(paths))
	for i, p := range paths {
		q[i] = quote(p)
	}
	return strings.Join(q, " ")
}
