// Package caddyarg reads the arguments of Caddyfile subdirectives, for
// every legacygate module. Each helper is called with the dispenser on the
// subdirective's name, consumes its arguments, and names that subdirective
// in its errors.
package caddyarg

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// One reads exactly one value.
func One(d *caddyfile.Dispenser) (string, error) {
	field := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return "", d.Errf("%s: want exactly one value", field)
	}
	return args[0], nil
}

// Int reads one whole number of at least least.
func Int(d *caddyfile.Dispenser, least int) (int, error) {
	field := d.Val()
	v, err := One(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < least {
		return 0, d.Errf("%s: %q is not a whole number of at least %d", field, v, least)
	}
	return n, nil
}

// Duration reads one positive duration into dst (Go units, or d for days).
func Duration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	field := d.Val()
	v, err := One(d)
	if err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		return d.Errf("%s: %q is not a positive duration (units ns to h, or d for days: 90d)", field, v)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// Port reads one TCP port number.
func Port(d *caddyfile.Dispenser) (int, error) {
	field := d.Val()
	v, err := One(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return 0, d.Errf("%s: %q is not a port number", field, v)
	}
	return n, nil
}

// Size reads one size in bytes, with units (16MiB, 64MB) or without.
func Size(d *caddyfile.Dispenser) (int64, error) {
	field := d.Val()
	if !d.NextArg() {
		return 0, d.Errf("%s: want a size such as 16MiB", field)
	}
	n, err := humanize.ParseBytes(d.Val())
	if err != nil || n == 0 || n > 1<<40 {
		return 0, d.Errf("%s: %q is not a size between 1 byte and 1TiB", field, d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return int64(n), nil
}

// Append reads one or more values and appends them to list, so that a
// repeated subdirective adds up.
func Append(d *caddyfile.Dispenser, list []string) ([]string, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.Errf("%s: want at least one value", d.Val())
	}
	return append(list, args...), nil
}

// None checks that a flag subdirective has no value.
func None(d *caddyfile.Dispenser) error {
	field := d.Val()
	if d.NextArg() {
		return d.Errf("%s takes no value", field)
	}
	return nil
}

// Off reads on or off and reports whether it was off.
func Off(d *caddyfile.Dispenser) (bool, error) {
	field := d.Val()
	if !d.NextArg() {
		return false, d.Errf("%s: want on or off", field)
	}
	value := d.Val()
	if d.NextArg() {
		return false, d.ArgErr()
	}
	switch value {
	case "on":
		return false, nil
	case "off":
		return true, nil
	}
	return false, d.Errf("%s: %q is neither on nor off", field, value)
}

// Parse reads exactly one value and hands it to set, naming the
// subdirective and the value when set fails. Use it where the value is
// checked later (at provision time) or by a parser of its own.
func Parse(d *caddyfile.Dispenser, set func(string) error) error {
	name := d.Val()
	if !d.NextArg() {
		return d.ArgErr()
	}
	value := d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	if err := set(value); err != nil {
		return d.Errf("%s %q: %v", name, value, err)
	}
	return nil
}

// SetString is a Parse setter that stores the value in dst.
func SetString(dst *string) func(string) error {
	return func(s string) error { *dst = s; return nil }
}

// SetInt is a Parse setter that stores any whole number in dst.
func SetInt(dst *int) func(string) error {
	return func(s string) error {
		v, err := strconv.Atoi(s)
		*dst = v
		return err
	}
}

// SetDuration is a Parse setter that stores any duration in dst.
func SetDuration(dst *caddy.Duration) func(string) error {
	return func(s string) error {
		v, err := caddy.ParseDuration(s)
		*dst = caddy.Duration(v)
		return err
	}
}
