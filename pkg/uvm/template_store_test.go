package uvm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/layervisor/layervisor/internal/atomicfile"
)

// fakeTemplate writes a template directory whose manifest matches the
// given inputs (no QEMU needed: the "QEMU" is a script printing a version).
func fakeTemplate(t *testing.T, root string, m Manifest) string {
	t.Helper()
	dir := filepath.Join(TemplatesDir(root), m.Key)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, tplState), []byte("state"), 0o644)
	f, _ := os.Create(filepath.Join(dir, tplRAM))
	f.Truncate(m.RAMSize)
	f.Close()
	h, err := hashFile(filepath.Join(dir, tplState))
	if err != nil {
		t.Fatal(err)
	}
	m.StateHash = h
	if err := atomicfile.WriteJSON(filepath.Join(dir, tplManifest), m, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestTemplateGCListRemove(t *testing.T) {
	root := t.TempDir()
	in := t.TempDir()
	qemu := filepath.Join(in, "qemu")
	os.WriteFile(qemu, []byte("#!/bin/sh\necho 'QEMU emulator version 9.9'\n"), 0o755)
	kernel, initrd := filepath.Join(in, "vmlinuz"), filepath.Join(in, "initrd.img")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	os.WriteFile(initrd, []byte("initrd"), 0o644)
	kh, _ := hashFile(kernel)
	ih, _ := hashFile(initrd)
	base := Manifest{Format: templateFormat, QEMU: qemu, QEMUVersion: "QEMU emulator version 9.9", Kernel: kernel, KernelHash: kh,
		Initrd: initrd, InitrdHash: ih, RAMSize: 1 << 20}
	good, oldQEMU, goneInitrd := base, base, base
	good.Key = "00000000000000000000000000000001"
	oldQEMU.Key, oldQEMU.QEMUVersion = "00000000000000000000000000000002", "QEMU emulator version 7.0"
	goneInitrd.Key, goneInitrd.Initrd = "00000000000000000000000000000003", filepath.Join(in, "gone.img")
	for _, m := range []Manifest{good, oldQEMU, goneInitrd} {
		fakeTemplate(t, root, m)
	}
	// A save that died half-way, and a template whose manifest is garbage.
	os.MkdirAll(filepath.Join(TemplatesDir(root), ".tmp-00000000000000000000000000000001-123"), 0o755)
	bad := filepath.Join(TemplatesDir(root), "00000000000000000000000000000004")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, tplManifest), []byte("{"), 0o644)

	ts, err := ListTemplates(root)
	if err != nil || len(ts) != 4 {
		t.Fatalf("ls: %+v %v", ts, err)
	}
	for _, ti := range ts {
		if (ti.Stale == "") != (ti.Key == good.Key) {
			t.Errorf("template %s: stale %q", ti.Key, ti.Stale)
		}
	}
	removed, err := gcTemplates(root)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	want := []string{".tmp-00000000000000000000000000000001-123", oldQEMU.Key, goneInitrd.Key, "00000000000000000000000000000004"}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Fatalf("gc removed %v, want %v", removed, want)
	}
	if ts, _ := ListTemplates(root); len(ts) != 1 || ts[0].Key != good.Key {
		t.Fatalf("after gc: %+v", ts)
	}
	if err := RemoveTemplate(root, "../x"); err == nil {
		t.Fatal("rm of a bad key succeeded")
	}
	if err := RemoveTemplate(root, "0000000000000000000000000000000f"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("rm of a missing template: %v", err)
	}
	if err := RemoveTemplate(root, good.Key); err != nil {
		t.Fatal(err)
	}
	if ts, _ := ListTemplates(root); len(ts) != 0 {
		t.Fatalf("after rm: %+v", ts)
	}
}

// saveRAM keeps the content and leaves zero pages out.
func TestSaveRAMSkipsZeroPages(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	data := bytes.Repeat([]byte{7}, 4096)
	// Written zero pages (allocated), data pages, a hole, data at the end.
	f.WriteAt(make([]byte, 8<<20), 0)
	f.WriteAt(data, 8<<20)
	f.WriteAt(data, 8<<20+3*4096)
	f.WriteAt(data[:100], 64<<20-100)
	f.Close()
	if err := saveRAM(context.Background(), src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("content differs")
	}
	st, _ := os.Stat(dst)
	if n := allocated(st); n > 1<<20 {
		t.Fatalf("%d bytes allocated: zero pages copied", n)
	}
	if err := saveRAM(context.Background(), src, dst); !errors.Is(err, os.ErrExist) {
		t.Fatalf("over an existing file: %v", err)
	}
}
