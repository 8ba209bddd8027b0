package uvm

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/testutil"
)

// The initramfs is written in <root>/boot as a temp file locked by its
// build, so gc (atomicfile.RemoveStale, as store.GC runs it) leaves it while
// the build lives; it is flushed before its rename and boot/ after it.
func TestInitramfsBuildIsLockedAndPublished(t *testing.T) {
	// A small dynamic program stands in for the guest's OCI runtime.
	guestRuntime := testutil.NeedTool(t, "true")
	src := t.TempDir()
	const kver = "0.0.0-test"
	if err := os.MkdirAll(filepath.Join(src, "lib", "modules", kver), 0o755); err != nil {
		t.Fatal(err)
	}
	for p, s := range map[string]string{"kernel-version": kver, "lib/modules/" + kver + "/modules.dep": "", "agent": "#!/bin/sh\n"} {
		if err := os.WriteFile(filepath.Join(src, filepath.FromSlash(p)), []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root := t.TempDir()
	boot := filepath.Join(root, "boot")
	out := filepath.Join(boot, "initrd.img")

	// When the build flushes its temp file (done writing, not yet renamed),
	// try to reap it.
	var mu sync.Mutex
	var inFlight string
	var reaped []string
	var reapErr error
	stop := atomicfile.Watch(func(op atomicfile.Op) {
		if op.Kind == atomicfile.OpSyncFile && filepath.Dir(op.Path) == boot {
			r, err := atomicfile.RemoveStale(boot, ".tmp-")
			mu.Lock()
			inFlight, reaped, reapErr = op.Path, r, err
			mu.Unlock()
		}
	})
	steps := testutil.WatchSync(t, root)
	err := BuildInitramfs(context.Background(), InitramfsOptions{BootDir: src, Agent: filepath.Join(src, "agent"), Runtime: guestRuntime, Out: out})
	stop()
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if inFlight == "" || reapErr != nil || len(reaped) != 0 {
		t.Errorf("gc during the build: temp file %q, removed %v (%v)", inFlight, reaped, reapErr)
	}
	if tmp := steps.Published(t, out); tmp != inFlight {
		t.Errorf("published from %q, the flushed temp file was %q", tmp, inFlight)
	}
	if ents, _ := os.ReadDir(boot); len(ents) != 1 || ents[0].Name() != "initrd.img" {
		t.Errorf("boot/ holds %v", ents)
	}
}
