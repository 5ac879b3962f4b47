package main

import (
	"errors"
	"syscall"
)

// wsaeaddrinuse is Winsock's "address already in use"; syscall.EADDRINUSE
// is an invented value on Windows that no bind returns.
const wsaeaddrinuse = syscall.Errno(10048)

func addrInUse(err error) bool {
	return errors.Is(err, wsaeaddrinuse)
}
