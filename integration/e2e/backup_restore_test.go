package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/legacygate/legacygate/integration/harness"
)

// TestRestoredStorageCarriesRotationProgressToANewGateway follows
// docs/operations/backup.md: stop the gateway, copy its storage directory,
// start a new gateway (its own data directory, so its own instance id) on
// the copy; a client that had confirmed the next key keeps it.
func TestRestoredStorageCarriesRotationProgressToANewGateway(t *testing.T) {
	now := time.Now()
	storage := t.TempDir()
	old := newRotationLab(t)
	old.persist = "1h" // only the save at shutdown writes the progress
	old.startGateway(t, now.Add(-time.Hour), now.Add(time.Hour), storage)
	host := old.register(t)
	old.confirmThrough(t, host)
	_, _, _ = harness.Run(t, "stop", "--address", old.gw.AdminAddr)
	waitAdminGone(t, old.gw.AdminAddr)

	backup := filepath.Join(t.TempDir(), "legacygate-storage")
	if err := os.CopyFS(backup, os.DirFS(storage)); err != nil {
		t.Fatalf("backing up %s: %v", storage, err)
	}
	if err := os.RemoveAll(storage); err != nil { // the old machine is gone
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(backup, "legacygate", "rotation")); err != nil {
		t.Fatalf("the backup holds no rotation progress: %v", err)
	}

	restored := &rotationLab{dir: old.dir, mgr: old.mgr, current: old.current, next: old.next, persist: "1h"}
	restored.startGateway(t, now.Add(-time.Hour), now.Add(time.Hour), backup)
	if p := restored.get(t, restored.gw.Client(t), restored.https, "profile", host); !verifies(t, restored.next.Cert, p.body) {
		t.Fatalf("on the restored storage: status %d, the confirmed client's profile is not signed with the next key", p.status)
	}
}
