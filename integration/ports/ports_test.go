package ports

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestFreeNeverHandsOutAClaimedPort(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		port, err := Free()
		if err != nil {
			t.Fatal(err)
		}
		if seen[port] {
			t.Fatalf("port %d handed out twice", port)
		}
		seen[port] = true
		dir, err := claimsDir()
		if err != nil {
			t.Fatal(err)
		}
		ok, err := claim(filepath.Join(dir, strconv.Itoa(port)))
		if err != nil || ok {
			t.Fatalf("port %d could be claimed again (ok %v, err %v)", port, ok, err)
		}
	}
}

func TestFreePortCanBeBound(t *testing.T) {
	port, err := Free()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("port %d is not free: %v", port, err)
	}
	ln.Close()
}

// TestAnotherProcessCannotClaimAHeldPort claims a port here and asks a child
// process (this test binary) to claim the same one.
func TestAnotherProcessCannotClaimAHeldPort(t *testing.T) {
	if file := os.Getenv("PORTS_CLAIM_FILE"); file != "" {
		ok, err := claim(file)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			t.Fatal("CLAIMED")
		}
		return
	}
	port, err := Free()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := claimsDir()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, strconv.Itoa(port))
	cmd := exec.Command(os.Args[0], "-test.run", "^TestAnotherProcessCannotClaimAHeldPort$", "-test.v")
	cmd.Env = append(os.Environ(), "PORTS_CLAIM_FILE="+file)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "CLAIMED") {
		t.Fatalf("the child claimed port %d held here (err %v):\n%s", port, err, out)
	}
}
