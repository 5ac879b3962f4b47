package bench

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTargetCPUsSplitTheMachine: --target-cpus refuses CPUs this process
// cannot use and a split that leaves the load nothing; otherwise this
// process's threads move to the other CPUs and a target started on its
// CPUs runs there.
func TestTargetCPUsSplitTheMachine(t *testing.T) {
	var before unix.CPUSet
	if err := unix.SchedGetaffinity(0, &before); err != nil {
		t.Fatal(err)
	}
	avail := cpusOf(&before)
	if _, err := pinLoad([]int{maxCPUs + 1}); err == nil || !strings.Contains(err.Error(), "not available") {
		t.Errorf("a CPU this process cannot use: %v, want a refusal naming it", err)
	}
	if _, err := pinLoad(avail); err == nil || !strings.Contains(err.Error(), "leave no CPU") {
		t.Errorf("every CPU for the targets: %v, want a refusal", err)
	}
	if len(avail) < 2 {
		t.Logf("one CPU (%v): only the refusals can be checked here", avail)
		return
	}
	t.Cleanup(func() {
		if err := setAllThreads(&before); err != nil {
			t.Error(err)
		}
	})
	split, err := pinLoad(avail[:1])
	if err != nil {
		t.Fatal(err)
	}
	if want := (cpuSplit{targets: cpuList(avail[:1]), load: cpuList(avail[1:])}); split != want {
		t.Fatalf("split %+v, want %+v", split, want)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &set); err != nil {
			continue // the thread ended
		}
		if got := cpuList(cpusOf(&set)); got != split.load {
			t.Errorf("thread %d runs on CPUs %s, want the load's %s", tid, got, split.load)
		}
	}
	p, err := startProcess("probe", t.TempDir(), split.targets, "grep", "Cpus_allowed_list", "/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the probe did not end")
	}
	if want := "Cpus_allowed_list:\t" + split.targets; !strings.Contains(p.logs.String(), want) {
		t.Errorf("a target started on CPU %s reports %q, want %q", split.targets, p.logs.String(), want)
	}
}
