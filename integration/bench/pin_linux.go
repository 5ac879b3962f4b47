package bench

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cpuSplit is where the targets and the load run, as taskset's CPU lists.
type cpuSplit struct {
	targets, load string
}

// pinLoad moves every thread of this process (the emulated managers and
// the Go generator; wrk inherits it) onto the CPUs available to it that are
// not in targets, and returns both lists. Targets are then started on
// theirs with taskset (startProcess).
func pinLoad(targets []int) (cpuSplit, error) {
	var avail unix.CPUSet
	if err := unix.SchedGetaffinity(0, &avail); err != nil {
		return cpuSplit{}, fmt.Errorf("bench: reading this process's CPUs: %w", err)
	}
	availList := cpusOf(&avail)
	for _, c := range targets {
		if !slices.Contains(availList, c) {
			return cpuSplit{}, fmt.Errorf("bench: target CPU %d is not available to this process (available: %s)", c, cpuList(availList))
		}
	}
	var load unix.CPUSet
	var loadList []int
	for _, c := range availList {
		if !slices.Contains(targets, c) {
			load.Set(c)
			loadList = append(loadList, c)
		}
	}
	if len(loadList) == 0 {
		return cpuSplit{}, fmt.Errorf("bench: target CPUs %s leave no CPU for the load generator and the managers", cpuList(targets))
	}
	if err := setAllThreads(&load); err != nil {
		return cpuSplit{}, err
	}
	return cpuSplit{targets: cpuList(targets), load: cpuList(loadList)}, nil
}

// setAllThreads sets the affinity of every thread of this process. Threads
// started meanwhile copy the affinity of the thread that started them, so
// passes repeat until one finds no thread it had not set.
func setAllThreads(set *unix.CPUSet) error {
	done := map[int]bool{}
	for {
		entries, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("bench: listing this process's threads: %w", err)
		}
		fresh := 0
		for _, e := range entries {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("bench: pinning thread %d: %w", tid, err)
			}
			done[tid] = true
			fresh++
		}
		if fresh == 0 {
			return nil
		}
	}
}

// maxCPUs is how many CPUs a unix.CPUSet holds (CPU_SETSIZE).
const maxCPUs = 1024

// cpusOf lists the CPUs in set.
func cpusOf(set *unix.CPUSet) []int {
	var cpus []int
	for c := range maxCPUs {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

// cpuList is cpus as taskset and the report write them: "0,2".
func cpuList(cpus []int) string {
	parts := make([]string, len(cpus))
	for i, c := range cpus {
		parts[i] = strconv.Itoa(c)
	}
	return strings.Join(parts, ",")
}
