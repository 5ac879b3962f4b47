package redislab

import "testing"

func TestRestartWithoutPersistenceComesBackEmptyOnTheSamePort(t *testing.T) {
	s := Start(t, Options{})
	addr := s.Addr
	s.Restart(t)
	if s.Addr != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr, addr)
	}
	if err := ping(s.Addr); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	s.Stop()
	if err := ping(addr); err == nil {
		t.Fatal("a stopped server still answers PING")
	}
}
