//go:build race

package fleet

// raceEnabled: the race detector slows everything ~10×, so timing
// assertions are skipped under it.
const raceEnabled = true
