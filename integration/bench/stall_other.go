//go:build !unix

package bench

import (
	"errors"
	"time"
)

func stall(int, time.Duration) error {
	return errors.New("storm: --stall needs a Unix system (SIGSTOP)")
}
