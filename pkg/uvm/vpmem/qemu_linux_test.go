package vpmem

import (
	"context"
	"errors"
	"testing"

	"github.com/layervisor/layervisor/pkg/uvm/hotplug/hotplugtest"
	"github.com/layervisor/layervisor/pkg/uvm/pciports"
)

// The QEMU adapter against a real (paused) QEMU with 4 root ports.
func TestQEMUHostAddPmem(t *testing.T) {
	q := hotplugtest.Start(t)
	ctx := context.Background()
	ports := pciports.New(4)
	h := NewQEMUHost(q, ports)
	ls := layers(t, 5, 2<<20)
	size, err := MappedSize(ls[0], DefaultAlign)
	if err != nil || size != 2<<20 {
		t.Fatalf("MappedSize %d %v", size, err)
	}
	// Too large for the file: QEMU refuses, nothing stays plugged.
	if _, err := h.AddPmem(ctx, 0, ls[0], size+4096); err == nil || errors.Is(err, ErrPlugged) {
		t.Fatalf("oversized mapping: %v", err)
	}
	if ports.InUse() != 0 {
		t.Fatal("failed add kept its root port")
	}
	addrs := map[uint64]bool{}
	for i := 0; i < 4; i++ {
		addr, err := h.AddPmem(ctx, i, ls[i], size)
		if err != nil {
			t.Fatal(err)
		}
		if addr < 1<<32 || addrs[addr] {
			t.Fatalf("device %d at %#x", i, addr)
		}
		addrs[addr] = true
	}
	var devs []memoryDevice
	if err := q.Execute(ctx, "query-memory-devices", nil, &devs); err != nil {
		t.Fatal(err)
	}
	if len(devs) != 4 {
		t.Fatalf("%d memory devices, want 4", len(devs))
	}
	for _, d := range devs {
		if d.Data.Size != size || !addrs[d.Data.Memaddr] {
			t.Fatalf("device %+v", d)
		}
	}
	// Out of root ports: the fallback error.
	if _, err := h.AddPmem(ctx, 4, ls[4], size); !errors.Is(err, ErrNoFreeSlot) {
		t.Fatalf("no root port left: %v", err)
	}
}
