package uvm_test

import (
	"context"
	"path"
	"testing"

	"github.com/layervisor/layervisor/internal/attachtest/vmtest"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/uvm"
	"github.com/layervisor/layervisor/pkg/uvm/scsi"
)

// Hot-plug works on a UVM restored from a template as after a boot: a
// SCSI disk, a VPMEM layer and a virtiofs share each attach, show their
// files in the guest, and detach.
func TestAttachAfterRestore(t *testing.T) {
	ctx := context.Background()
	var u *uvm.UVM
	// The first UVM in the shared root may have saved the template itself:
	// start until one is restored.
	for i, id := range []string{"attach-a", "attach-b"} {
		cfg := uvm.TplConfig(t, id)
		v, err := uvm.Create(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v.Stop(context.Background()); v.Remove(context.Background()) })
		if err := v.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if v.State().Template != "" {
			u = v
			break
		}
		if i == 1 {
			t.Fatal("second UVM not restored from the template")
		}
	}
	g := &vmtest.Guest{A: u.Agent()}
	check := func(what, dir string) {
		t.Helper()
		if _, err := u.Agent().Stat(ctx, path.Join(dir, vmtest.Marker)); err != nil {
			t.Fatalf("%s: marker not visible at %s: %v", what, dir, err)
		}
	}

	sc, err := u.SCSI()
	if err != nil {
		t.Fatal(err)
	}
	sm, err := sc.Attach(ctx, vmtest.LayerImage(t), scsi.Options{Format: diskformat.VHDFixed, ReadOnly: true, MountInGuest: true})
	if err != nil {
		t.Fatal(err)
	}
	check("scsi", sm.GuestPath())

	vp, err := u.VPMem()
	if err != nil {
		t.Fatal(err)
	}
	vm, err := vp.Attach(ctx, vmtest.LayerImage(t))
	if err != nil {
		t.Fatal(err)
	}
	check("vpmem", vm.GuestPath())

	sh, err := u.Shares()
	if err != nil {
		t.Fatal(err)
	}
	s, err := sh.Attach(ctx, vmtest.Tree(t), true)
	if err != nil {
		t.Fatal(err)
	}
	check("share", s.GuestPath())

	for what, rel := range map[string]func(context.Context) error{"scsi": sm.Release, "vpmem": vm.Release, "share": s.Release} {
		if err := rel(ctx); err != nil {
			t.Fatalf("%s release: %v", what, err)
		}
	}
	if g.Mounted(t, sm.GuestPath()) || g.Mounted(t, s.GuestPath()) {
		t.Fatal("a detached disk or share is still mounted in the guest")
	}
	if sc.Attached() != 0 || sh.Active() != 0 {
		t.Fatalf("after release: %d SCSI disks, %d shares", sc.Attached(), sh.Active())
	}
}
