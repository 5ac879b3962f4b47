package handover

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"

	"golang.org/x/sys/unix"
)

// system is Linux's SO_REUSEPORT group: Caddy binds a new socket for every
// address at every configuration load.
var system = &platform{steer: steer, drain: drain}

// steer attaches to ln's SO_REUSEPORT group a classic BPF program that
// returns 0: every new connection goes to the group's socket at index 0,
// the oldest one, which is the primary as long as it is never closed while
// later sockets exist.
func steer(ln net.Listener) error {
	tcp, err := tcpListener(ln)
	if err != nil {
		return err
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return fmt.Errorf("listener %s: %w", ln.Addr(), err)
	}
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
			&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	}); err != nil {
		return fmt.Errorf("listener %s: %w", ln.Addr(), err)
	}
	if serr != nil {
		return fmt.Errorf("listener %s: SO_ATTACH_REUSEPORT_CBPF: %w", ln.Addr(), serr)
	}
	return nil
}

// drain accepts the connections queued on ln without blocking (the socket
// is non-blocking, as every socket Go opens).
func drain(ln net.Listener) []net.Conn {
	tcp, err := tcpListener(ln)
	if err != nil {
		return nil
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return nil
	}
	var conns []net.Conn
	_ = raw.Control(func(fd uintptr) {
		for {
			nfd, _, err := unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				continue
			}
			if err != nil {
				return
			}
			f := os.NewFile(uintptr(nfd), "handover")
			c, err := net.FileConn(f) // duplicates the descriptor
			_ = f.Close()
			if err == nil {
				conns = append(conns, c)
			}
		}
	})
	return conns
}

// tcpListener finds the *net.TCPListener under Caddy's wrappers (an
// unexported struct embedding net.Listener, listen_unix.go deleteListener).
func tcpListener(ln net.Listener) (*net.TCPListener, error) {
	for range 8 {
		if tcp, ok := ln.(*net.TCPListener); ok {
			return tcp, nil
		}
		v := reflect.ValueOf(ln)
		if v.Kind() == reflect.Pointer {
			v = v.Elem()
		}
		if v.Kind() != reflect.Struct {
			break
		}
		f, ok := v.Type().FieldByName("Listener")
		if !ok || !f.Anonymous || !f.IsExported() {
			break
		}
		inner, ok := v.FieldByIndex(f.Index).Interface().(net.Listener)
		if !ok || inner == nil {
			break
		}
		ln = inner
	}
	return nil, fmt.Errorf("listener %s (%T): %w", ln.Addr(), ln, errNoTCP)
}

var errNoTCP = errors.New("not a TCP socket: no hand-over")
