// Command mgrsim runs emulated legacy managers and client fleets for labs,
// demos and benchmarks:
//
//	mgrsim manager --flavor sepm [flags]   an emulated manager (see manager.go)
//	mgrsim clients [flags]                 a simulated client fleet
//	mgrsim demo [flags]                    a manager and a gateway in front of it, narrated
//
// Each subcommand lives in its own file and registers itself in init().
//
// The emulated managers need no GODEBUG for TLS 1.0, RSA key exchange or 3DES:
// they set MinVersion and CipherSuites explicitly, which Go honours. The one
// setting below lets a TLS 1.2 peer that offers only SHA-1 signature
// algorithms (or omits the extension, as pre-RFC 9155 stacks do) complete a
// handshake, as it could with a real legacy manager or client; Go 1.25 turned
// that off by default.
//
//go:debug tlssha1=1
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
)

// command is one mgrsim subcommand. run gets the arguments after the
// command's name and returns the process exit code.
type command struct {
	summary string
	run     func(args []string) int
}

// commands is filled by each subcommand file's init().
var commands = map[string]command{}

// register adds a subcommand; registering a name twice is a programming error.
func register(name string, c command) {
	if _, dup := commands[name]; dup {
		panic("mgrsim: command " + name + " registered twice")
	}
	commands[name] = c
}

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stderr))
}

// dispatch runs the named subcommand and returns its exit code: 2 for usage errors.
func dispatch(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "help" {
		usage(stderr)
		return 0
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "mgrsim: unknown command %q\n\n", name)
		usage(stderr)
		return 2
	}
	return c.run(args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: mgrsim <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'mgrsim <command> -h' for a command's flags.")
}
