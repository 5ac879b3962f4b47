//go:build !linux

package policyguard

import "time"

// threadCPUTime is unavailable here; the ratio falls back to wall time.
func threadCPUTime() (time.Duration, bool) { return 0, false }
