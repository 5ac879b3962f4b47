// Package ports hands out loopback TCP ports to tests, the demo and the
// benchmarks, which start servers in other processes.
//
// A port found free with bind(127.0.0.1:0) and released again can be
// handed to another process too, and `go test ./...` runs several packages'
// tests at once. With most servers the second bind would fail loudly;
// Caddy binds with SO_REUSEPORT, so two gateways given the same port both
// bind it and share its connections silently (a plain-HTTP test then meets
// another test's HTTPS site). Free therefore claims each port across
// processes with an flock on a file named after it, in a directory of this
// user's ($TMPDIR/legacygate-ports-<uid>), held until this process exits.
package ports

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// claims keeps the locked files open: closing one would release its port.
var (
	mu     sync.Mutex
	claims []*os.File
)

// tries bounds the search for a port no other process has claimed.
const tries = 100

// Free returns a loopback TCP port that was free a moment ago and that no
// other process using this package has claimed.
func Free() (int, error) {
	dir, err := claimsDir()
	if err != nil {
		return 0, err
	}
	for range tries {
		port, err := kernelPort()
		if err != nil {
			return 0, err
		}
		ok, err := claim(filepath.Join(dir, strconv.Itoa(port)))
		if err != nil {
			return 0, err
		}
		if ok {
			return port, nil
		}
	}
	return 0, errors.New("finding a free port: every port offered was claimed by another process")
}

// claimsDir is this user's directory of port claims: created private, and
// refused when it is a symlink or someone else's.
func claimsDir() (string, error) {
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("legacygate-ports-%d", os.Getuid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("port claims directory: %w", err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("port claims directory: %w", err)
	}
	owner, ok := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || !ok || int(owner.Uid) != os.Getuid() {
		return "", fmt.Errorf("port claims directory %s: not a directory of this user", dir)
	}
	return dir, nil
}

// kernelPort asks the kernel for a free TCP port.
// The port is taken on the wildcard address: Caddy binds a site's port on
// every interface, so a port free on 127.0.0.1 alone (another process's
// socket on 0.0.0.0 or a single address) could still fail its bind.
func kernelPort() (int, error) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// claim locks file for this process; false means another process (or an
// earlier claim of this one) holds it.
func claim(file string) (bool, error) {
	f, err := os.OpenFile(file, os.O_CREATE|os.O_RDWR|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return false, fmt.Errorf("claiming a port: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, fmt.Errorf("claiming a port (%s): %w", file, err)
	}
	mu.Lock()
	claims = append(claims, f)
	mu.Unlock()
	return true, nil
}
