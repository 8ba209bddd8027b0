package scsi

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/uvm/hotplug/hotplugtest"
	"github.com/layervisor/layervisor/pkg/vhd"
)

type blockNode struct {
	NodeName string `json:"node-name"`
	Drv      string `json:"drv"`
	RO       bool   `json:"ro"`
	File     string `json:"file"`
	Image    struct {
		VirtualSize int64 `json:"virtual-size"`
	} `json:"image"`
}

func nodes(t *testing.T, q *hotplugtest.QEMU) map[string]blockNode {
	t.Helper()
	var ns []blockNode
	if err := q.Execute(context.Background(), "query-named-block-nodes", map[string]any{"flat": true}, &ns); err != nil {
		t.Fatal(err)
	}
	out := map[string]blockNode{}
	for _, n := range ns {
		out[n.NodeName] = n
	}
	return out
}

// The QEMU adapter against a real (paused) QEMU: the host half of hot-plug.
func TestQEMUHostAddRemove(t *testing.T) {
	q := hotplugtest.Start(t)
	ctx := context.Background()
	h := NewQEMUHost(q)
	dir := t.TempDir()
	raw := filepath.Join(dir, "sandbox.img")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	layer := filepath.Join(dir, "layer.vhd")
	f, err := os.Create(layer)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2 << 20); err != nil {
		t.Fatal(err)
	}
	if err := vhd.AppendFixedFooter(f); err != nil {
		t.Fatal(err)
	}
	f.Close()

	if err := h.AddDisk(ctx, Slot{0, 0}, raw, diskformat.Raw, false); err != nil {
		t.Fatal(err)
	}
	if err := h.AddDisk(ctx, Slot{0, 1}, layer, diskformat.VHDFixed, true); err != nil {
		t.Fatal(err)
	}
	ns := nodes(t, q)
	if n := ns["scsi0-lun0"]; n.Drv != "raw" || n.RO || n.Image.VirtualSize != 1<<20 {
		t.Fatalf("raw disk node: %+v", n)
	}
	if n := ns["scsi0-lun1"]; n.Drv != "raw" || !n.RO || n.Image.VirtualSize != 2<<20 {
		t.Fatalf("VHD layer node (want raw, read-only, data size without the footer): %+v", n)
	}
	// A bus that does not exist: device_add fails and the blockdev is undone.
	err = h.AddDisk(ctx, Slot{1, 0}, raw, diskformat.Raw, true)
	if err == nil || !strings.Contains(err.Error(), "scsi1.0") {
		t.Fatalf("attach on a missing controller: %v", err)
	}
	if _, ok := nodes(t, q)["scsi1-lun0"]; ok {
		t.Fatal("blockdev left behind after failed device_add")
	}
	for _, s := range []Slot{{0, 0}, {0, 1}} {
		if err := h.RemoveDisk(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if ns := nodes(t, q); len(ns) != 0 {
		t.Fatalf("block nodes left: %v", ns)
	}
	// The same slot is usable again.
	if err := h.AddDisk(ctx, Slot{0, 0}, layer, diskformat.VHDFixed, true); err != nil {
		t.Fatal(err)
	}
	// QEMU dies: the next operation fails clearly instead of hanging.
	q.Kill()
	if err := h.RemoveDisk(ctx, Slot{0, 0}); err == nil {
		t.Fatal("RemoveDisk on a dead QEMU succeeded")
	} else {
		t.Logf("dead QEMU: %v", err)
	}
}
