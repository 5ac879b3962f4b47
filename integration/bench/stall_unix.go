//go:build unix

package bench

import (
	"fmt"
	"syscall"
	"time"
)

// stall freezes the process for d (SIGSTOP, then SIGCONT), as a long GC
// pause or a starved host would: every goroutine stops, timers fire late.
func stall(pid int, d time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("stalling pid %d: %w", pid, err)
	}
	time.Sleep(d)
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		return fmt.Errorf("resuming pid %d: %w", pid, err)
	}
	return nil
}
