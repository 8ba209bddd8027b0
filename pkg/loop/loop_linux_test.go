package loop

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
)

func needRoot(t *testing.T) {
	t.Helper()
	testutil.NeedRoot(t)
}

func backedBy(t *testing.T, file string) []Info {
	t.Helper()
	all, err := List()
	if err != nil {
		t.Fatal(err)
	}
	var out []Info
	for _, i := range all {
		if i.Backing == file {
			out = append(out, i)
		}
	}
	return out
}

func TestAttachSizeLimitAndAutoclear(t *testing.T) {
	needRoot(t)
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, make([]byte, 1<<20+512), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := Attach(file, Options{ReadOnly: true, SizeLimit: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if got := backedBy(t, file); len(got) != 1 || got[0].Path != d.Path {
		t.Fatalf("list after attach: %+v", got)
	}
	out, err := exec.Command("blockdev", "--getsize64", d.Path).Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "1048576\n" {
		t.Fatalf("device size %q, want 1048576 (size limit hides the footer)", out)
	}
	ro, _ := exec.Command("blockdev", "--getro", d.Path).Output()
	if string(ro) != "1\n" {
		t.Fatalf("device not read-only: %q", ro)
	}
	// Closing the last reference detaches the device (autoclear).
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(backedBy(t, file)) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("device not auto-cleared after last close")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAttachMissingFile(t *testing.T) {
	needRoot(t)
	if _, err := Attach("/nonexistent/layer.vhd", Options{}); err == nil {
		t.Fatal("attach of missing file succeeded")
	}
}

func TestDetach(t *testing.T) {
	needRoot(t)
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := Attach(file, Options{})
	if err != nil {
		t.Fatal(err)
	}
	path := d.Path
	if err := Detach(path); err != nil {
		t.Fatal(err)
	}
	d.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(backedBy(t, file)) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("device still attached after Detach")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
