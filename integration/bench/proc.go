package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// procTree is a process and its descendants (nginx's master and workers,
// HAProxy's master and worker).
// Every figure below sums over the tree as it is when asked.
type procTree struct{ pid int }

// cpuSeconds is utime+stime of the process and its live descendants.
func (p procTree) cpuSeconds() (float64, error) {
	var ticks int64
	for _, pid := range p.pids() {
		fields, err := statFields(pid)
		if err != nil {
			return 0, err
		}
		// fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15.
		for _, f := range fields[11:13] {
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/stat: utime/stime %q: %w", pid, f, err)
			}
			ticks += n
		}
	}
	return float64(ticks) / clockTicks, nil
}

// memory sums a VmXXX field (kB) of /proc/PID/status over the tree, in bytes.
func (p procTree) memory(field string) (int64, error) {
	var total int64
	for _, pid := range p.pids() {
		kb, err := statusKB(pid, field)
		if err != nil {
			return 0, err
		}
		total += kb * 1024
	}
	return total, nil
}

// peakRSS is the summed VmHWM (peak resident set) of the tree.
func (p procTree) peakRSS() (int64, error) { return p.memory("VmHWM") }

// rss is the summed VmRSS (resident set now) of the tree.
func (p procTree) rss() (int64, error) { return p.memory("VmRSS") }

// pids is the process and its descendants, found through each /proc entry's
// parent pid.
func (p procTree) pids() []int {
	entries, _ := filepath.Glob("/proc/[0-9]*")
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(filepath.Base(e))
		if err != nil {
			continue
		}
		fields, err := statFields(pid)
		if err != nil || len(fields) < 2 {
			continue
		}
		ppid, err := strconv.Atoi(fields[1])
		if err != nil {
			continue
		}
		children[ppid] = append(children[ppid], pid)
	}
	out := []int{p.pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// statFields returns /proc/PID/stat's fields after the command name (which
// may hold spaces): fields[0] is the state, fields[1] the parent pid.
func statFields(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 13 {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields))
	}
	return fields, nil
}

// statusKB reads one "Name:  N kB" line of /proc/PID/status.
func statusKB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		value, ok := strings.CutPrefix(sc.Text(), field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status %s %q: %w", pid, field, value, err)
		}
		return kb, nil
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s line", pid, field)
}
