//go:build race

package e2e

// raceEnabled: the race detector slows the in-process fleet and emulator
// about tenfold, so the fleet tests run fewer clients under it.
const raceEnabled = true
