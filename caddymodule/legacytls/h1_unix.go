//go:build unix

package legacytls

import "syscall"

// canPeekSockets: alive can tell a closed idle connection, so the fast
// path can reuse connections.
const canPeekSockets = true

// peekWouldBlock reports whether a non-blocking peek at the socket finds
// nothing to read yet (no data, no FIN, no error).
func peekWouldBlock(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
}
