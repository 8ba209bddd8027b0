package uvm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The default initramfs is named by its inputs: a changed agent or
// runtime gets a new one (an older initramfs is never reused for a new
// agent), the same inputs the same one.
func TestDefaultInitrdFollowsInputs(t *testing.T) {
	dir := t.TempDir()
	root, boot := filepath.Join(dir, "root"), filepath.Join(dir, "boot")
	os.MkdirAll(boot, 0o755)
	os.WriteFile(filepath.Join(boot, "kernel-version"), []byte("6.1.0-test\n"), 0o644)
	agentBin, runtimeBin := filepath.Join(dir, "agent"), filepath.Join(dir, "crun")
	write := func(p, content string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(agentBin, "agent v1")
	write(runtimeBin, "runtime v1")
	host := HostOptions{Agent: agentBin, GuestRuntime: runtimeBin}
	name := func() string {
		t.Helper()
		p, err := DefaultInitrd(root, boot, host)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(p) != filepath.Join(root, "boot") || !strings.HasPrefix(filepath.Base(p), "initrd-") {
			t.Fatalf("initramfs %s: want <root>/boot/initrd-*.img", p)
		}
		return p
	}
	first := name()
	if again := name(); again != first {
		t.Errorf("same inputs: %s, then %s", first, again)
	}
	// A rewritten file is a new identity for the hash cache even within
	// the same second: ctime and size move.
	time.Sleep(10 * time.Millisecond)
	write(agentBin, "agent v2")
	second := name()
	if second == first {
		t.Errorf("a new agent kept the initramfs %s", first)
	}
	write(runtimeBin, "runtime v2")
	third := name()
	if third == second || third == first {
		t.Errorf("a new runtime kept the initramfs %s", third)
	}
	os.WriteFile(filepath.Join(boot, "kernel-version"), []byte("6.1.0-other\n"), 0o644)
	fourth := name()
	if fourth == third {
		t.Errorf("a new kernel kept the initramfs %s", third)
	}
	// The same content written again keeps the name: content, not time.
	write(runtimeBin, "runtime v2")
	if again := name(); again != fourth {
		t.Errorf("the runtime rewritten unchanged: %s, want %s", again, fourth)
	}
	if _, err := DefaultInitrd(root, boot, HostOptions{Agent: filepath.Join(dir, "missing"), GuestRuntime: runtimeBin}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("a missing agent: %v, want an error naming it", err)
	}
}
