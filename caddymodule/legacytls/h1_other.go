//go:build !unix

package legacytls

// canPeekSockets: without a unix socket peek, alive cannot tell a closed
// idle connection, so Go's transport serves every request.
const canPeekSockets = false

func peekWouldBlock(uintptr) bool { return false }
