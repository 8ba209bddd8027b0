package vpmem_test

import (
	"context"
	"testing"

	"github.com/layervisor/layervisor/internal/attachtest"
	"github.com/layervisor/layervisor/internal/attachtest/vmtest"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/uvm/hotplug"
	"github.com/layervisor/layervisor/pkg/uvm/pciports"
	"github.com/layervisor/layervisor/pkg/uvm/vpmem"
)

// guest mounts through the agent and counts unmounts (vmtest.Guest).
type guest struct{ *vmtest.Guest }

func (g guest) MountPmem(ctx context.Context, d vpmem.Device, gp string) error {
	return g.A.MountPmem(ctx, agent.MountPmemArgs{Addr: d.Addr, Size: d.Size, FSType: "ext4", Target: gp})
}

// mapped reports whether QEMU has a pmem device backed by file.
func mapped(t *testing.T, mon hotplug.Monitor, file string) bool {
	t.Helper()
	ctx := context.Background()
	var devs []struct {
		Type string `json:"type"`
		Data struct {
			Memdev string `json:"memdev"`
		} `json:"data"`
	}
	if err := mon.Execute(ctx, "query-memory-devices", nil, &devs); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if d.Type != "virtio-pmem" {
			continue
		}
		var path string
		if err := mon.Execute(ctx, "qom-get", map[string]any{"path": d.Data.Memdev, "property": "mem-path"}, &path); err != nil {
			t.Fatal(err)
		}
		if path == file {
			return true
		}
	}
	return false
}

// The release contract on a booted VM: real pmem devices (kept at ref
// zero), real guest mounts, a guest unmount that fails because the mount is
// busy.
func TestContractQEMU(t *testing.T) {
	u := vmtest.Boot(t, 4)
	g := guest{&vmtest.Guest{A: u.Agent()}}
	cfg := u.Config()
	// Its own root ports: the VM's own controllers are not used here.
	h := vpmem.NewQEMUHost(u.QMP(), pciports.New(cfg.RootPorts))
	c := vpmem.New(h, g, vpmem.Config{Slots: cfg.VPMemSlots, MaxSize: cfg.VPMemMaxSize, Budget: uint64(cfg.PmemBudgetMB) << 20})
	attachtest.Contract(t, func(t *testing.T) attachtest.Subject {
		p := vmtest.LayerImage(t)
		return attachtest.Subject{
			Attach:       func(ctx context.Context) (attachtest.Handle, error) { return c.Attach(ctx, p) },
			RefCount:     func() int { return c.RefCount(p) },
			HostAttached: func(t *testing.T) bool { return mapped(t, u.QMP(), p) },
			GuestMounted: g.Mounted,
			BreakUnmount: g.BreakUnmount,
			Unmounts:     g.Unmounts,
			KeepsHost:    true,
		}
	})
}
