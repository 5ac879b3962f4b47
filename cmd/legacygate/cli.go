package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// modulePath is this module's import path: commands registered from
// packages under it are legacygate's own.
const modulePath = "github.com/legacygate/legacygate"

const (
	groupLegacygate = "legacygate"
	groupCaddy      = "caddy"
)

const rootLong = `legacygate is a Caddy distribution that fronts legacy endpoint-security
managers (SEPM-style, Check Point-style and Trend PolicyServer-style): clients
reach it over TLS 1.2+, it reaches the manager over the old TLS the manager
speaks with a pinned certificate, verifies and re-signs the policy payloads it
forwards, limits heartbeat storms, and moves clients to new keys during a
rotation window, so the manager's certificate can change without orphaning a
client. It is Caddy with its standard modules plus legacygate's, configured
with a Caddyfile; Caddy's commands below work as in Caddy.`

const rootExample = `  $ legacygate init --manager 10.0.0.5:443 --manager-key server.key --site sepm.example.com
  $ legacygate run --config Caddyfile
  $ legacygate reload --config Caddyfile
  $ legacygate pin sepm.example.internal:8443
  $ legacygate rotation status --address localhost:2019`

// Help footers: legacygate's commands point to legacygate's documentation,
// Caddy's to Caddy's.
const (
	legacygateDocsFooter = `Documentation: https://github.com/legacygate/legacygate/blob/main/docs/commands.md`
	caddyDocsFooter      = `Full documentation is available at:
https://caddyserver.com/docs/command-line`
)

// refused are Caddy commands that would replace this binary with a build
// from caddyserver.com: a stock Caddy, without legacygate's modules.
var refused = map[string]string{
	"upgrade":        "Upgrade Caddy (refused: would replace legacygate with a stock Caddy)",
	"add-package":    "Adds Caddy packages (refused: would replace legacygate with a stock Caddy)",
	"remove-package": "Removes Caddy packages (refused: would replace legacygate with a stock Caddy)",
}

// execute runs the command line args (without the program name) and returns
// the process's exit status.
func execute(args []string, stdout, stderr io.Writer) int {
	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.Execute(); err != nil {
		return exitCode(err)
	}
	return 0
}

// newRootCommand builds legacygate's command tree from the commands
// registered with caddycmd.RegisterCommand (Caddy's, its modules', and
// legacygate's). Caddy's own root command cannot be reached from outside
// its package, so this replaces caddycmd.Main: same commands, converted as
// Caddy converts them, under a root that describes legacygate, lists
// legacygate's commands first, prints both versions, and refuses the
// commands that would swap the binary for a stock Caddy.
func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:          "legacygate",
		Long:         rootLong,
		Example:      rootExample,
		SilenceUsage: true,
		Version:      versionText(),
	}
	root.SetVersionTemplate("{{.Version}}\n")
	helpTemplate := root.HelpTemplate() // cobra's, before a footer is added
	root.SetHelpTemplate(helpTemplate + "\n" + legacygateDocsFooter + "\n")
	root.AddGroup(
		&cobra.Group{ID: groupLegacygate, Title: "legacygate commands:"},
		&cobra.Group{ID: groupCaddy, Title: "Caddy commands:"},
	)

	registered := caddycmd.Commands()
	names := make([]string, 0, len(registered))
	for name := range registered {
		names = append(names, name)
	}
	sort.Strings(names)
	rewrite := caddyInvocations(append(names, "help", "completion", "manpage"))
	for _, name := range names {
		c := registered[name]
		switch {
		case name == "version":
			root.AddCommand(versionCommand())
		case refused[name] != "":
			root.AddCommand(refusedCommand(name))
		case isLegacygateCommand(c):
			cmd := toCobra(c)
			cmd.GroupID = groupLegacygate
			root.AddCommand(cmd)
		default:
			cmd := toCobra(c)
			if name == "run" {
				guardRun(cmd)
			}
			cmd.GroupID = groupCaddy
			cmd.SetHelpTemplate(helpTemplate + "\n" + caddyDocsFooter + "\n")
			renameInvocations(cmd, rewrite)
			root.AddCommand(cmd)
		}
	}
	root.AddCommand(manpageCommand(root))
	return root
}

// toCobra converts a registered command as caddycmd does for its own root.
func toCobra(c caddycmd.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   c.Name + " " + c.Usage,
		Short: c.Short,
		Long:  c.Long,
	}
	if c.CobraFunc != nil {
		c.CobraFunc(cmd)
	} else {
		cmd.RunE = caddycmd.WrapCommandFuncForCobra(c.Func)
		cmd.Flags().AddGoFlagSet(c.Flags)
	}
	return cmd
}

// isLegacygateCommand says whether c was registered by a package of this
// module, judged by where its function is defined: caddycmd.Command records
// no origin, and a list of names here would miss the next command added.
func isLegacygateCommand(c caddycmd.Command) bool {
	var fn any = c.Func
	if c.CobraFunc != nil {
		fn = c.CobraFunc
	}
	f := runtime.FuncForPC(reflect.ValueOf(fn).Pointer())
	return f != nil && strings.HasPrefix(f.Name(), modulePath+"/")
}

// caddyInvocations matches "caddy <command>" for the given command names in
// Caddy's help texts; "Caddy" the server is left alone.
func caddyInvocations(names []string) *regexp.Regexp {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	// Longest first, so a name that prefixes another cannot win.
	slices.SortFunc(quoted, func(a, b string) int { return len(b) - len(a) })
	return regexp.MustCompile(`\bcaddy (` + strings.Join(quoted, "|") + `)\b`)
}

// renameInvocations makes the examples in a Caddy command's help (and its
// subcommands') name this binary, so they can be pasted as they are.
func renameInvocations(cmd *cobra.Command, re *regexp.Regexp) {
	cmd.Long = re.ReplaceAllString(cmd.Long, "legacygate $1")
	cmd.Example = re.ReplaceAllString(cmd.Example, "legacygate $1")
	for _, sub := range cmd.Commands() {
		renameInvocations(sub, re)
	}
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Prints legacygate's version and the Caddy version it embeds",
		Long: `
Prints legacygate's version (set at build time, or the module version of a
tagged build; "dev" with the VCS revision for a build from a source tree) on
the first line and the version of Caddy it embeds on the second.`,
		GroupID: groupCaddy,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printVersion(cmd.OutOrStdout())
		},
	}
}

// refusedCommand stands in for a Caddy command that downloads a new binary
// from caddyserver.com: that build would be a stock Caddy and silently drop
// every legacygate module. It is hidden from the list and takes any
// arguments, so Caddy's documented invocations reach the explanation.
func refusedCommand(name string) *cobra.Command {
	return &cobra.Command{
		Use:                name,
		Short:              refused[name],
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SilenceUsage = true
			return fmt.Errorf(`legacygate %s is not available: Caddy's %s downloads a stock Caddy build from
caddyserver.com and replaces this binary with it. That build has none of
legacygate's modules (legacy_tls, policy_guard, heartbeat_limit, …), so the
gateway's configuration would no longer load.

Build legacygate from its source instead:
  go build -o legacygate ./cmd/legacygate
To add or remove a Caddy plugin, add or remove its import in
cmd/legacygate/main.go, then build`, name, name)
		},
	}
}

// manpageCommand is Caddy's manpage command for this tree (Caddy adds its
// own only to the root command it builds), with Caddy's exit statuses.
func manpageCommand(root *cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "manpage --directory <path>",
		Short: "Generates the manual pages for legacygate commands",
		Long: `
Generates the manual pages for legacygate commands into the directory given
with --directory (created if it does not exist), in section 8 (System
Administration).`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringP("directory", "o", "", "The output directory where the manpages are generated")
	cmd.RunE = caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
		dir := strings.TrimSpace(fl.String("directory"))
		if dir == "" {
			return caddy.ExitCodeFailedQuit, errors.New("--directory: an output directory is required")
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return caddy.ExitCodeFailedQuit, fmt.Errorf("--directory: %w", err)
		}
		if err := doc.GenManTree(root, &doc.GenManHeader{Title: "legacygate", Section: "8"}, dir); err != nil {
			return caddy.ExitCodeFailedQuit, fmt.Errorf("writing the manual pages to %s: %w", dir, err)
		}
		return caddy.ExitCodeSuccess, nil
	})
	return cmd
}

// exitCode is the status for err: caddycmd.WrapCommandFuncForCobra carries
// a command's status above 1 in an unexported error type whose ExitCode
// field caddycmd.Main reads; it is read here the same way, by field name.
// Everything else is 1.
func exitCode(err error) int {
	for e := err; e != nil; e = errors.Unwrap(e) {
		v := reflect.ValueOf(e)
		if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
			continue
		}
		if f := v.Elem().FieldByName("ExitCode"); f.IsValid() && f.CanInt() {
			return int(f.Int())
		}
	}
	return 1
}
