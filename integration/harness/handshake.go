package harness

import (
	"crypto/tls"
	"testing"
	"time"
)

// HandshakeServer listens on 127.0.0.1 with cfg and cert, completes TLS
// handshakes (each bounded to 5 s) and serves nothing else: a manager to
// probe or pin. It stops when the test ends and returns its address.
func HandshakeServer(t testing.TB, cert tls.Certificate, cfg *tls.Config) string {
	t.Helper()
	cfg.Certificates = []tls.Certificate{cert}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				_ = conn.(*tls.Conn).Handshake()
			}()
		}
	}()
	return ln.Addr().String()
}
