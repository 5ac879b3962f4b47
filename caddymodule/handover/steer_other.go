//go:build !linux

package handover

// system is nil outside Linux: the wrapper passes listeners through and a
// reload behaves as in stock Caddy, whose sockets there are not rebound
// with SO_REUSEPORT in the same way.
var system *platform
