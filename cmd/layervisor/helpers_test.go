package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/uvm"
)

func TestMain(m *testing.M) {
	os.Exit(testutil.Main(m))
}

func demoImage(t *testing.T, format string) string {
	t.Helper()
	im, err := imagebuild.Demo("demo:latest")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "demo-"+format)
	if err := im.Write(imagebuild.Format(format), out); err != nil {
		t.Fatal(err)
	}
	return out
}

func busyboxImage(t *testing.T) string {
	t.Helper()
	l, err := imagebuild.BusyboxBase()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "busybox.tar")
	if err := (imagebuild.Image{Name: "busybox:latest", Layers: []imagebuild.Layer{l}}).Write(imagebuild.OCITar, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkDemoTree compares a merged view with imagebuild.DemoExpected.
func checkDemoTree(t *testing.T, root string) {
	t.Helper()
	for p, want := range imagebuild.DemoExpected {
		full := filepath.Join(root, p)
		switch {
		case want == "":
			if _, err := os.Lstat(full); !os.IsNotExist(err) {
				t.Errorf("%s should not exist in the merged view (err %v)", p, err)
			}
		case strings.HasPrefix(want, "->"):
			if got, err := os.Readlink(full); err != nil || got != want[2:] {
				t.Errorf("%s -> %q (%v), want %q", p, got, err, want[2:])
			}
		default:
			if got, err := os.ReadFile(full); err != nil || string(got) != want {
				t.Errorf("%s = %q (%v), want %q", p, got, err, want)
			}
		}
	}
	a, _ := os.Stat(filepath.Join(root, "data.txt"))
	b, _ := os.Stat(filepath.Join(root, "data-link.txt"))
	if a == nil || b == nil || !os.SameFile(a, b) {
		t.Errorf("data-link.txt is not a hard link of data.txt")
	}
	if st, err := os.Stat(filepath.Join(root, "app/blob.bin")); err != nil || st.Size() != 1<<20 {
		t.Errorf("app/blob.bin: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "bin/sh")); err != nil {
		t.Errorf("bin/sh missing: %v", err)
	}
}

func e2fsck(t *testing.T, p string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-n", "-f", p).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -n -f %s: %v\n%s", p, err, out)
	}
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	testutil.Run(t, name, args...)
}

func itoa(n int) string { return strconv.Itoa(n) }

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if _, err := os.Stat("/proc/" + itoa(pid)); err != nil {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("pid %d still alive", pid)
}

// assertNoQEMU fails if any QEMU of this root is running.
func assertNoQEMU(t *testing.T, root string) {
	t.Helper()
	if pids := uvm.QEMUProcesses(root); len(pids) > 0 {
		t.Fatalf("QEMU processes left: %v", pids)
	}
}
