//go:build !unix

package legacytls

// peekWouldBlock cannot tell without a unix socket peek: an idle
// connection is then never reused by the fast path.
func peekWouldBlock(uintptr) bool { return false }
