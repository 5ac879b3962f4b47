package handover

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// reusePortPair binds two SO_REUSEPORT sockets on one port, as Caddy does
// at a reload.
func reusePortPair(t *testing.T) (first, later net.Listener) {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	first, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = first.Close() })
	// Wrapped as Caddy's listen_unix.go deleteListener wraps its sockets.
	first = caddyLike{first, "key"}
	later, err = lc.Listen(context.Background(), "tcp", first.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = later.Close() })
	return first, later
}

// caddyLike has the shape of Caddy's deleteListener.
type caddyLike struct {
	net.Listener
	lnKey string
}

func dialN(t *testing.T, addr net.Addr, n int) {
	t.Helper()
	for range n {
		dial(t, addr)
	}
	// The kernel finishes the handshakes: a dial returns at the SYN-ACK.
	time.Sleep(50 * time.Millisecond)
}

func TestDrainTakesEveryConnectionQueuedOnASocket(t *testing.T) {
	first, later := reusePortPair(t)
	const n = 40
	dialN(t, first.Addr(), n)
	fromLater := drain(later)
	fromFirst := drain(first)
	if len(fromLater) == 0 {
		t.Fatal("the kernel queued nothing on the later socket: the drain was not exercised")
	}
	if got := len(fromLater) + len(fromFirst); got != n {
		t.Fatalf("drained %d+%d connections, want %d", len(fromLater), len(fromFirst), n)
	}
	for _, c := range append(fromLater, fromFirst...) {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Errorf("a drained connection does not work: %v", err)
		}
		_ = c.Close()
	}
	if more := drain(first); len(more) != 0 {
		t.Errorf("a second drain found %d connections, want none", len(more))
	}
}

// TestLaterSocketsLoseNoConnectionAndGetNoneWhenSteered: whatever the
// kernel allows, every connection is taken on the first socket or drained
// from a later one before it closes (the wrapper's two paths); where the
// kernel accepts the steering program, later sockets receive none, even
// after a third socket joins and the second leaves.
func TestLaterSocketsLoseNoConnectionAndGetNoneWhenSteered(t *testing.T) {
	first, later := reusePortPair(t)
	steered := true
	if err := steer(first); err != nil {
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EPERM) {
			t.Fatal(err)
		}
		steered = false
		t.Logf("this kernel refuses socket BPF programs (%v): only the drain is proved", err)
	}
	third, err := (&net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
	}}).Listen(context.Background(), "tcp", first.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = third.Close() })
	const n = 40
	dialN(t, first.Addr(), n)
	fromLater := drain(later)
	_ = later.Close()
	dialN(t, first.Addr(), n)
	fromThird := drain(third)
	fromFirst := drain(first)
	if got := len(fromFirst) + len(fromLater) + len(fromThird); got != 2*n {
		t.Errorf("%d+%d+%d connections taken, want %d: some were lost", len(fromFirst), len(fromLater), len(fromThird), 2*n)
	}
	if steered && len(fromLater)+len(fromThird) != 0 {
		t.Errorf("steered, the later sockets received %d and %d connections, want none", len(fromLater), len(fromThird))
	}
}

func TestTCPListenerIsFoundUnderCaddysWrapper(t *testing.T) {
	first, _ := reusePortPair(t)
	if _, err := tcpListener(first); err != nil {
		t.Errorf("Caddy-like wrapper: %v", err)
	}
	u, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = u.Close() })
	if _, err := tcpListener(caddyLike{u, "k"}); !errors.Is(err, errNoTCP) {
		t.Errorf("unix socket: error %v, want errNoTCP", err)
	}
}
