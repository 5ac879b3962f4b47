package limiter

import "testing"

// The reference vectors of the SipHash paper (key 00..0f, message 00..n-1).
func TestHasherMatchesSipHash24ReferenceVectors(t *testing.T) {
	var seed [SeedSize]byte
	for i := range seed {
		seed[i] = byte(i)
	}
	h := NewHasher(seed)
	msg := make([]byte, 16)
	for i := range msg {
		msg[i] = byte(i)
	}
	tests := []struct {
		n    int
		want uint64
	}{
		{0, 0x726fdb47dd0e0e31},
		{1, 0x74f839c593dc67fd},
		{8, 0x93f5f5799a932462},
		{15, 0xa129ca6149be45e5},
	}
	for _, tt := range tests {
		if got := h.Sum(msg[:tt.n]); got != tt.want {
			t.Errorf("SipHash-2-4 of %d bytes = %#x, want %#x", tt.n, got, tt.want)
		}
	}
}

func TestHasherSeedChangesTheHash(t *testing.T) {
	a, b := NewHasher(RandomSeed()), NewHasher(RandomSeed())
	if a.Sum([]byte("host-1")) == b.Sum([]byte("host-1")) {
		t.Fatal("two random seeds gave the same hash")
	}
}
