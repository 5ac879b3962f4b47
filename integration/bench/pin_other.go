//go:build !linux

package bench

import "errors"

// cpuSplit is where the targets and the load run, as taskset's CPU lists.
type cpuSplit struct {
	targets, load string
}

// pinLoad needs Linux's sched_setaffinity and taskset.
func pinLoad([]int) (cpuSplit, error) {
	return cpuSplit{}, errors.New("bench: --target-cpus needs Linux")
}
