package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// version is legacygate's version when set at build time:
//
//	go build -ldflags '-X main.version=v1.2.0' ./cmd/legacygate
//
// Otherwise it comes from the build info (a tagged `go install …@v1.2.0`), or
// is "dev" with the VCS revision when the build recorded one.
var version string

// legacygateVersion is this binary's legacygate version.
func legacygateVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	return versionFromBuildInfo(bi)
}

// versionFromBuildInfo is the main module's version, "(devel)" (a build
// from a source tree) shown as "dev", followed by the VCS revision, its
// time and whether the tree was modified, when the build recorded them.
func versionFromBuildInfo(bi *debug.BuildInfo) string {
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "dev"
	}
	var rev, when string
	var modified bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		return v
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	details := []string{rev}
	if when != "" {
		details = append(details, when)
	}
	if modified {
		details = append(details, "modified")
	}
	return v + " (" + strings.Join(details, ", ") + ")"
}

// caddyVersion is the version of the Caddy module this binary embeds, as
// Caddy reports it (module version and checksum from the build info).
func caddyVersion() string {
	_, full := caddy.Version()
	return full
}

// versionText is what `legacygate version` and `legacygate --version` print.
func versionText() string {
	return fmt.Sprintf("legacygate %s\nCaddy %s", legacygateVersion(), caddyVersion())
}

func printVersion(w io.Writer) error {
	_, err := fmt.Fprintln(w, versionText())
	return err
}
