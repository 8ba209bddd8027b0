package uvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/mountinfo"
)

// Kill ends QEMU without a guest shutdown and still leaves nothing on the
// host: no QEMU, no virtiofsd, no read-only view mounted, and Remove
// removes the state.
func TestKillLeavesNothing(t *testing.T) {
	ctx := context.Background()
	u := start(t, tplConfig(t, "kill"))
	sh, err := u.Shares()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	if _, err := sh.Attach(ctx, dir, true); err != nil {
		t.Fatal(err)
	}
	qemu := u.State().PID
	daemons := u.shareHst.Daemons()
	if len(daemons) != 1 || !mountedUnder(t, u.dir) {
		t.Fatalf("share not set up: daemons %v", daemons)
	}
	if err := u.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if alive(qemu, u.dir) {
		t.Fatal("QEMU still running after Kill")
	}
	for tag, pid := range daemons {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			t.Fatalf("virtiofsd %s (%d) still running after Kill", tag, pid)
		}
	}
	if mountedUnder(t, u.dir) {
		t.Fatal("read-only view still mounted after Kill")
	}
	if err := u.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(u.dir); !os.IsNotExist(err) {
		t.Fatal("state dir left after Remove")
	}
}

func mountedUnder(t *testing.T, dir string) bool {
	t.Helper()
	ms, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if strings.HasPrefix(m.Mountpoint, dir+"/") {
			return true
		}
	}
	return false
}
