package redispool

import (
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestClientsAreSharedByKeyAndOutliveAReload(t *testing.T) {
	dials := 0
	dial := func() redis.UniversalClient {
		dials++
		// Never used: go-redis dials only on a command.
		return redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{"127.0.0.1:1"}})
	}
	t.Cleanup(func() { Release("test|a"); Release("test|b") })

	a := Acquire("test|a", dial)
	if again := Acquire("test|a", dial); again != a || dials != 1 {
		t.Fatalf("a second user of the same key got another client (%d dials)", dials)
	}
	if b := Acquire("test|b", dial); b == a || dials != 2 {
		t.Fatalf("another key shared the client (%d dials)", dials)
	}
	// Both users of "a" let go, as an old configuration does during a
	// reload; the new configuration acquires it within closeGrace.
	Release("test|a")
	Release("test|a")
	if next := Acquire("test|a", dial); next != a || dials != 2 {
		t.Fatalf("the client was not kept for the next configuration (%d dials)", dials)
	}
}
