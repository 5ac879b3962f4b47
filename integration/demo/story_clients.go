//go:build !race

package demo

import "time"

// storyClients is the size of each of the story's fleets.
const storyClients = 1000

// storyInterval is the fleets' heartbeat interval.
const storyInterval = time.Second
