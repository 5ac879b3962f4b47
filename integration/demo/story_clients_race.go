//go:build race

package demo

import "time"

// storyClients is the size of each of the story's fleets; the race detector
// slows everything about ten times, so its builds run a smaller fleet.
const storyClients = 40

// storyInterval is the fleets' heartbeat interval.
const storyInterval = 2 * time.Second
