// Package redispool shares Redis clients between the modules that open
// them (caddy.storage.redis, heartbeat_limit's cluster), one per set of
// connection settings, across reloads.
package redispool

import (
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// closeGrace is how long a client no configuration uses any more stays
// open. Caddy cleans up a configuration's modules in no set order, so the
// legacygate app's final save may come after the storage's Cleanup; and a
// reload provisions the new configuration before the old one is cleaned
// up, so the new one takes the client over without reconnecting.
const closeGrace = 30 * time.Second

// clientPool shares one client between the users that give the same key.
type clientPool struct {
	mu      sync.Mutex
	entries map[string]*pooled
}

type pooled struct {
	client redis.UniversalClient
	refs   int
	closer *time.Timer
}

var pool = &clientPool{entries: map[string]*pooled{}}

// Acquire returns the client open for key, or the one dial makes. key must
// name every setting that makes a client different (address, credentials,
// database, TLS, timeouts, pool size) and the module asking, so that
// differently configured clients are never shared. Each Acquire needs one
// Release.
func Acquire(key string, dial func() redis.UniversalClient) redis.UniversalClient {
	return pool.acquire(key, dial)
}

// Release gives key's client back; the last Release closes it after
// closeGrace, unless it is acquired again before.
func Release(key string) { pool.release(key) }

func (p *clientPool) acquire(key string, dial func() redis.UniversalClient) redis.UniversalClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.entries[key]; ok {
		if e.closer != nil {
			e.closer.Stop()
			e.closer = nil
		}
		e.refs++
		return e.client
	}
	e := &pooled{client: dial(), refs: 1}
	p.entries[key] = e
	return e.client
}

func (p *clientPool) release(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.entries[key]
	if !ok {
		return
	}
	if e.refs--; e.refs > 0 {
		return
	}
	if e.closer != nil {
		e.closer.Stop()
	}
	var timer *time.Timer
	timer = time.AfterFunc(closeGrace, func() {
		p.mu.Lock()
		if p.entries[key] != e || e.refs > 0 || e.closer != timer {
			p.mu.Unlock()
			return
		}
		delete(p.entries, key)
		p.mu.Unlock()
		_ = e.client.Close()
	})
	e.closer = timer
}
