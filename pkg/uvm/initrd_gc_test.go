package uvm

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/atomicfile"
)

// gc removes the initramfs files nothing names: not one a UVM or a
// template uses, not the newest, not one younger than initrdMinAge; and
// nothing when a UVM's record cannot be read.
func TestGCInitrds(t *testing.T) {
	root := t.TempDir()
	boot := filepath.Join(root, "boot")
	os.MkdirAll(boot, 0o755)
	now := time.Now()
	initrd := func(name string, age time.Duration) string {
		p := filepath.Join(boot, name)
		if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, now.Add(-age), now.Add(-age))
		return p
	}
	byUVM := initrd("initrd-aaaa.img", 3*time.Hour)
	byTemplate := initrd("initrd-bbbb.img", 3*time.Hour)
	initrd("initrd-cccc.img", 3*time.Hour)                   // nothing names it
	initrd("initrd-7.img", 4*time.Hour)                      // an old hand-numbered one
	initrd("initrd-dddd.img", time.Minute)                   // just built: the newest, and young
	initrd("initrd-eeee.img", initrdMinAge/2)                // young
	os.WriteFile(filepath.Join(boot, "vmlinuz"), nil, 0o644) // not an initramfs
	// An old link named like an initramfs to a file elsewhere: the link
	// goes, never its target.
	outside := filepath.Join(t.TempDir(), "precious")
	os.WriteFile(outside, []byte("keep"), 0o600)
	os.Chtimes(outside, now.Add(-5*time.Hour), now.Add(-5*time.Hour))
	os.Symlink(outside, filepath.Join(boot, "initrd-link.img"))
	if err := os.MkdirAll(Dir(root, "vm1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteJSON(filepath.Join(Dir(root, "vm1"), "uvm.json"), State{Config: Config{Initrd: byUVM}}, false); err != nil {
		t.Fatal(err)
	}
	tpl := filepath.Join(TemplatesDir(root), "0123456789abcdef0123456789abcdef")
	os.MkdirAll(tpl, 0o755)
	if err := atomicfile.WriteJSON(filepath.Join(tpl, tplManifest), Manifest{Initrd: byTemplate}, false); err != nil {
		t.Fatal(err)
	}

	// A UVM whose record is damaged: what it uses is unknown, nothing goes.
	os.MkdirAll(Dir(root, "vm2"), 0o755)
	os.WriteFile(filepath.Join(Dir(root, "vm2"), "uvm.json"), []byte("{"), 0o600)
	if removed, err := gcInitrds(root, now); err == nil || len(removed) != 0 {
		t.Fatalf("with a damaged uvm.json: removed %v, err %v", removed, err)
	}
	os.RemoveAll(Dir(root, "vm2"))

	removed, err := gcInitrds(root, now)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{"initrd-7.img", "initrd-cccc.img", "initrd-link.img"}; !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	if b, err := os.ReadFile(outside); err != nil || string(b) != "keep" {
		t.Errorf("a link's target outside boot: %q, %v", b, err)
	}
	left, _ := filepath.Glob(filepath.Join(boot, "*"))
	for i, p := range left {
		left[i] = filepath.Base(p)
	}
	if want := []string{"initrd-aaaa.img", "initrd-bbbb.img", "initrd-dddd.img", "initrd-eeee.img", "vmlinuz"}; !slices.Equal(left, want) {
		t.Errorf("left %v, want %v", left, want)
	}

	// A boot directory linked from elsewhere is shared: left alone.
	other := t.TempDir()
	if err := os.Symlink(boot, filepath.Join(other, "boot")); err != nil {
		t.Fatal(err)
	}
	if removed, err := gcInitrds(other, now.Add(time.Hour)); err != nil || len(removed) != 0 {
		t.Errorf("through a linked boot directory: removed %v, %v", removed, err)
	}

	// All old and none named: the newest stays.
	os.RemoveAll(Dir(root, "vm1"))
	os.RemoveAll(tpl)
	removed, err = gcInitrds(root, now.Add(time.Hour))
	slices.Sort(removed)
	if want := []string{"initrd-aaaa.img", "initrd-bbbb.img", "initrd-eeee.img"}; err != nil || !slices.Equal(removed, want) {
		t.Errorf("removed %v (%v), want %v: the newest, initrd-dddd.img, stays", removed, err, want)
	}
}
