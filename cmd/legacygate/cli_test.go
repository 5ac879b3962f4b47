package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/spf13/cobra"
)

// run executes the command tree in-process and returns its exit status and
// outputs.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = execute(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// section returns the command names listed under heading in a help text,
// in the order printed.
func section(help, heading string) []string {
	_, rest, ok := strings.Cut(help, "\n"+heading+"\n")
	if !ok {
		return nil
	}
	var names []string
	for _, line := range strings.Split(rest, "\n") {
		if !strings.HasPrefix(line, "  ") {
			break
		}
		names = append(names, strings.Fields(line)[0])
	}
	return names
}

// ownCommands are the commands this module registers; each must show up
// in legacygate's group.
var ownCommands = []string{"init", "pin", "policy", "rewrite", "rotation"}

func TestHelpDescribesLegacygateAndListsItsCommandsFirst(t *testing.T) {
	for _, args := range [][]string{nil, {"help"}, {"--help"}, {"-h"}} {
		t.Run(strings.Join(append([]string{"legacygate"}, args...), " "), func(t *testing.T) {
			code, help, stderr := run(t, args...)
			if code != 0 {
				t.Fatalf("exit %d, want 0; stderr %q", code, stderr)
			}
			for _, want := range []string{
				"legacygate is a Caddy distribution that fronts legacy endpoint-security\nmanagers",
				"Usage:\n  legacygate [command]",
				"$ legacygate run --config Caddyfile",
				"Documentation: https://github.com/legacygate/legacygate/blob/main/docs/commands.md",
			} {
				if !strings.Contains(help, want) {
					t.Errorf("help lacks %q:\n%s", want, help)
				}
			}
			for _, unwanted := range []string{"Caddy is an extensible server platform", "caddyserver.com", "caddy run", "Usage:\n  caddy"} {
				if strings.Contains(help, unwanted) {
					t.Errorf("help still says %q:\n%s", unwanted, help)
				}
			}
			ours := strings.Index(help, "\nlegacygate commands:\n")
			theirs := strings.Index(help, "\nCaddy commands:\n")
			if ours < 0 || theirs < 0 || ours > theirs {
				t.Fatalf("legacygate commands at %d, Caddy commands at %d; want both, legacygate's first:\n%s", ours, theirs, help)
			}
			listed := section(help, "legacygate commands:")
			for _, name := range ownCommands {
				if !slices.Contains(listed, name) {
					t.Errorf("legacygate commands %v lack %s", listed, name)
				}
			}
			if !slices.IsSorted(listed) {
				t.Errorf("legacygate commands %v, want them in alphabetical order (init, pin, policy, rewrite, rotation)", listed)
			}
			caddys := section(help, "Caddy commands:")
			for _, name := range []string{"run", "reload", "adapt", "version"} {
				if !slices.Contains(caddys, name) || slices.Contains(listed, name) {
					t.Errorf("%s: want it among Caddy's commands %v, not legacygate's %v", name, caddys, listed)
				}
			}
		})
	}
}

// allCommands is every command under c, depth first.
func allCommands(c *cobra.Command) []*cobra.Command {
	var all []*cobra.Command
	for _, sub := range c.Commands() {
		all = append(all, sub)
		all = append(all, allCommands(sub)...)
	}
	return all
}

func TestEveryOwnCommandsHelpSaysLegacygateAndLinksNowhereAtCaddy(t *testing.T) {
	root := newRootCommand()
	var checked []string
	for _, top := range root.Commands() {
		if top.GroupID != groupLegacygate {
			continue
		}
		for _, c := range append([]*cobra.Command{top}, allCommands(top)...) {
			path := strings.Fields(c.CommandPath())[1:]
			checked = append(checked, strings.Join(path, " "))
			t.Run(strings.Join(path, "_"), func(t *testing.T) {
				code, help, stderr := run(t, append(path, "--help")...)
				if code != 0 {
					t.Fatalf("exit %d, want 0; stderr %q", code, stderr)
				}
				usage := "Usage:\n  legacygate " + strings.Join(path, " ")
				if !strings.Contains(help, usage) {
					t.Errorf("help lacks %q:\n%s", usage, help)
				}
				if regexp.MustCompile(`\bcaddy\b`).MatchString(help) || strings.Contains(help, "caddyserver.com") {
					t.Errorf("help names caddy or links to caddyserver.com:\n%s", help)
				}
				if !strings.Contains(help, legacygateDocsFooter) {
					t.Errorf("help lacks legacygate's documentation link:\n%s", help)
				}
			})
		}
	}
	for _, want := range append(ownCommands, "policy sign", "rotation status") {
		if !slices.Contains(checked, want) {
			t.Errorf("checked %v, want %q among them (it is registered by this module)", checked, want)
		}
	}
}

func TestPinHelpSaysLegacygatePin(t *testing.T) {
	code, help, _ := run(t, "pin", "--help")
	want := "Usage:\n  legacygate pin [--server-name <name>] [--timeout <duration>] <host:port>"
	if code != 0 || !strings.Contains(help, want) {
		t.Errorf("exit %d, help:\n%s\nwant exit 0 and %q", code, help, want)
	}
}

func TestCaddyCommandsNameThisBinaryAndKeepCaddysDocs(t *testing.T) {
	root := newRootCommand()
	names := []string{"help"}
	for _, c := range allCommands(root) {
		names = append(names, c.Name())
	}
	invocation := caddyInvocations(names)
	for _, top := range root.Commands() {
		if top.GroupID != groupCaddy || top.Name() == "version" {
			continue
		}
		t.Run(top.Name(), func(t *testing.T) {
			code, help, stderr := run(t, top.Name(), "--help")
			if code != 0 {
				t.Fatalf("exit %d, want 0; stderr %q", code, stderr)
			}
			if !strings.Contains(help, "Usage:\n  legacygate "+top.Name()) {
				t.Errorf("usage does not say legacygate %s:\n%s", top.Name(), help)
			}
			if m := invocation.FindString(help); m != "" {
				t.Errorf("help still tells users to type %q:\n%s", m, help)
			}
			if !strings.Contains(help, caddyDocsFooter) || strings.Contains(help, legacygateDocsFooter) {
				t.Errorf("help of Caddy's %s should link to Caddy's documentation only:\n%s", top.Name(), help)
			}
		})
	}
	_, help, _ := run(t, "start", "--help")
	if !strings.Contains(help, "'legacygate run'") {
		t.Errorf("start's help does not point to 'legacygate run':\n%s", help)
	}
}

func TestVersionPrintsLegacygateAndCaddyVersions(t *testing.T) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("no build info in the test binary")
	}
	var caddyModule string
	for _, dep := range bi.Deps {
		if dep.Path == caddy.ImportPath {
			caddyModule = dep.Version
		}
	}
	if caddyModule == "" {
		t.Fatalf("%s is not among the test binary's dependencies", caddy.ImportPath)
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, stderr := run(t, args...)
			if code != 0 {
				t.Fatalf("exit %d, want 0; stderr %q", code, stderr)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 {
				t.Fatalf("got %q, want two lines (legacygate's version, Caddy's)", out)
			}
			if want := "legacygate " + legacygateVersion(); lines[0] != want {
				t.Errorf("first line %q, want %q", lines[0], want)
			}
			if !strings.HasPrefix(lines[1], "Caddy "+caddyModule) {
				t.Errorf("second line %q, want it to start with %q", lines[1], "Caddy "+caddyModule)
			}
		})
	}
}

func TestVersionFromBuildInfo(t *testing.T) {
	vcs := func(kv ...string) []debug.BuildSetting {
		var s []debug.BuildSetting
		for i := 0; i < len(kv); i += 2 {
			s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return s
	}
	tests := []struct {
		name     string
		main     string
		settings []debug.BuildSetting
		want     string
	}{
		{"source tree without VCS", "(devel)", nil, "dev"},
		{"no main version", "", nil, "dev"},
		{"tagged release", "v1.2.0", nil, "v1.2.0"},
		{"source tree with VCS", "(devel)",
			vcs("vcs.revision", "0123456789abcdef0123", "vcs.time", "2025-03-01T10:00:00Z", "vcs.modified", "false"),
			"dev (0123456789ab, 2025-03-01T10:00:00Z)"},
		{"modified tree", "(devel)",
			vcs("vcs.revision", "0123456789abcdef0123", "vcs.time", "2025-03-01T10:00:00Z", "vcs.modified", "true"),
			"dev (0123456789ab, 2025-03-01T10:00:00Z, modified)"},
		{"pseudo-version with VCS", "v0.0.0-20250301100000-0123456789ab",
			vcs("vcs.revision", "0123456789abcdef0123"),
			"v0.0.0-20250301100000-0123456789ab (0123456789ab)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bi := &debug.BuildInfo{Main: debug.Module{Path: modulePath, Version: tt.main}, Settings: tt.settings}
			if got := versionFromBuildInfo(bi); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestVersionSetAtBuildTimeWins(t *testing.T) {
	old := version
	t.Cleanup(func() { version = old })
	version = "v9.8.7"
	_, out, _ := run(t, "version")
	if !strings.HasPrefix(out, "legacygate v9.8.7\nCaddy ") {
		t.Errorf("got %q, want legacygate v9.8.7 then Caddy's version", out)
	}
}

func TestCommandsThatReplaceTheBinaryWithStockCaddyRefuse(t *testing.T) {
	tests := [][]string{
		{"upgrade"},
		{"upgrade", "--keep-backup"},
		{"add-package", "github.com/caddy-dns/cloudflare"},
		{"remove-package", "-k", "github.com/legacygate/legacygate"},
	}
	for _, args := range tests {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			// Caddy's own command would download a binary and replace this
			// one: make sure the refusal is what runs before running it.
			c, _, err := newRootCommand().Find(args)
			if err != nil || c.Name() != args[0] || !c.Hidden || !strings.Contains(c.Short, "refused") {
				t.Fatalf("%s resolves to %q (hidden %v, %q, %v); want legacygate's hidden refusal", args[0], c.Name(), c.Hidden, c.Short, err)
			}
			code, stdout, stderr := run(t, args...)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			for _, want := range []string{"legacygate " + args[0] + " is not available", "stock Caddy", "would no longer load", "go build -o legacygate ./cmd/legacygate"} {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr)
				}
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
		})
	}
	_, help, _ := run(t, "help")
	for _, name := range []string{"upgrade", "add-package", "remove-package"} {
		if regexp.MustCompile(`(?m)^  ` + name + ` `).MatchString(help) {
			t.Errorf("help lists %s:\n%s", name, help)
		}
	}
}

func TestCaddyCommandsKeepTheirExitStatus(t *testing.T) {
	// manpage without --directory fails with caddy.ExitCodeFailedQuit, as
	// Caddy's does; an unknown command fails with 1.
	if code, _, _ := run(t, "manpage"); code != caddy.ExitCodeFailedQuit {
		t.Errorf("manpage without --directory: exit %d, want %d", code, caddy.ExitCodeFailedQuit)
	}
	if code, _, stderr := run(t, "frobnicate"); code != 1 || !strings.Contains(stderr, `unknown command "frobnicate" for "legacygate"`) {
		t.Errorf("unknown command: exit %d, stderr %q; want 1 and cobra's message naming legacygate", code, stderr)
	}
}

func TestManpageNamesLegacygate(t *testing.T) {
	dir := t.TempDir()
	if code, _, stderr := run(t, "manpage", "--directory", dir); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	page, err := os.ReadFile(filepath.Join(dir, "legacygate-pin.8"))
	if err != nil {
		t.Fatalf("no manual page for pin: %v", err)
	}
	if !strings.Contains(string(page), "legacygate pin") {
		t.Errorf("legacygate-pin.8 does not name legacygate pin:\n%s", page)
	}
}

// goCommand runs the go tool with args in this package's directory.
func goCommand(t *testing.T, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestBinaryLinksNoEmulator(t *testing.T) {
	out := goCommand(t, "list", "-deps", ".")
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, modulePath+"/integration/") {
			t.Errorf("cmd/legacygate links %s; the emulators and test tools must stay out of the production binary", pkg)
		}
	}
}

// TestBuiltBinaryPresentsLegacygate builds the binary with a version set
// at build time, as a release would, and runs it.
func TestBuiltBinaryPresentsLegacygate(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "legacygate")
	goCommand(t, "build", "-ldflags", "-X main.version=v0.0.0-cli-test", "-o", bin, ".")
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 0, "legacygate commands:\n  init "},
		{[]string{"version"}, 0, "legacygate v0.0.0-cli-test\nCaddy v2."},
		{[]string{"pin", "--help"}, 0, "Usage:\n  legacygate pin "},
		{[]string{"upgrade"}, 1, "legacygate upgrade is not available"},
		{[]string{"manpage"}, caddy.ExitCodeFailedQuit, "--directory"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(append([]string{"legacygate"}, tt.args...), " "), func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != tt.code || !strings.Contains(string(out), tt.want) {
				t.Errorf("exit %d, output:\n%s\nwant exit %d and %q", code, out, tt.code, tt.want)
			}
		})
	}
}
