package limiter

import (
	"crypto/rand"
	"encoding/binary"
	"math/bits"
)

// Hasher turns client keys into the 64-bit identities the Limiter tracks.
// It is SipHash-2-4, a keyed hash: without the seed a client cannot craft a
// key that collides with another client's bucket. Instances that limit
// together (distributed mode) share one seed so they agree on identities.
type Hasher struct {
	k0, k1 uint64
}

// SeedSize is the length of a Hasher seed in bytes.
const SeedSize = 16

// NewHasher returns a Hasher keyed with seed.
func NewHasher(seed [SeedSize]byte) Hasher {
	return Hasher{
		k0: binary.LittleEndian.Uint64(seed[:8]),
		k1: binary.LittleEndian.Uint64(seed[8:]),
	}
}

// RandomSeed returns a fresh random seed.
func RandomSeed() [SeedSize]byte {
	var seed [SeedSize]byte
	// crypto/rand.Read never returns an error on supported platforms.
	_, _ = rand.Read(seed[:])
	return seed
}

// Sum returns the SipHash-2-4 of b.
func (h Hasher) Sum(b []byte) uint64 {
	v0 := h.k0 ^ 0x736f6d6570736575
	v1 := h.k1 ^ 0x646f72616e646f6d
	v2 := h.k0 ^ 0x6c7967656e657261
	v3 := h.k1 ^ 0x7465646279746573
	n := len(b)
	for len(b) >= 8 {
		m := binary.LittleEndian.Uint64(b)
		v3 ^= m
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0 ^= m
		b = b[8:]
	}
	var last [8]byte
	copy(last[:], b)
	last[7] = byte(n)
	m := binary.LittleEndian.Uint64(last[:])
	v3 ^= m
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0 ^= m
	v2 ^= 0xff
	for range 4 {
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	}
	return v0 ^ v1 ^ v2 ^ v3
}

func sipRound(v0, v1, v2, v3 uint64) (uint64, uint64, uint64, uint64) {
	v0 += v1
	v1 = bits.RotateLeft64(v1, 13)
	v1 ^= v0
	v0 = bits.RotateLeft64(v0, 32)
	v2 += v3
	v3 = bits.RotateLeft64(v3, 16)
	v3 ^= v2
	v0 += v3
	v3 = bits.RotateLeft64(v3, 21)
	v3 ^= v0
	v2 += v1
	v1 = bits.RotateLeft64(v1, 17)
	v1 ^= v2
	v2 = bits.RotateLeft64(v2, 32)
	return v0, v1, v2, v3
}
