package scsi_test

import (
	"context"
	"testing"

	"github.com/layervisor/layervisor/internal/attachtest"
	"github.com/layervisor/layervisor/internal/attachtest/vmtest"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/uvm/hotplug"
	"github.com/layervisor/layervisor/pkg/uvm/scsi"
)

// guest mounts through the agent and counts unmounts (vmtest.Guest).
type guest struct{ *vmtest.Guest }

func (g guest) MountSCSI(ctx context.Context, s scsi.Slot, part int, ro bool, fsType, gp string) error {
	return g.A.MountSCSI(ctx, agent.MountSCSIArgs{Controller: s.Controller, LUN: s.LUN, Partition: part, ReadOnly: ro, FSType: fsType, Target: gp})
}

// host is the real QEMU host whose removal can be made to fail first.
type host struct {
	*scsi.QEMUHost
	*vmtest.Breaker
}

func (h host) RemoveDisk(ctx context.Context, s scsi.Slot) error {
	if err := h.Try(); err != nil {
		return err
	}
	return h.QEMUHost.RemoveDisk(ctx, s)
}

// plugged reports whether QEMU has a block node for the file.
func plugged(t *testing.T, mon hotplug.Monitor, file string) bool {
	t.Helper()
	var nodes []struct {
		File string `json:"file"`
	}
	if err := mon.Execute(context.Background(), "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.File == file {
			return true
		}
	}
	return false
}

// The release contract on a booted VM: real hot-plug, real guest mounts,
// a guest unmount that fails because the mount is busy.
func TestContractQEMU(t *testing.T) {
	u := vmtest.Boot(t, 0)
	g := guest{&vmtest.Guest{A: u.Agent()}}
	h := host{scsi.NewQEMUHost(u.QMP()), &vmtest.Breaker{}}
	c, err := scsi.New(h, g, u.Config().SCSIControllers)
	if err != nil {
		t.Fatal(err)
	}
	opts := scsi.Options{Format: diskformat.VHDFixed, ReadOnly: true, MountInGuest: true}
	attachtest.Contract(t, func(t *testing.T) attachtest.Subject {
		p := vmtest.LayerImage(t)
		return attachtest.Subject{
			Attach:       func(ctx context.Context) (attachtest.Handle, error) { return c.Attach(ctx, p, opts) },
			RefCount:     func() int { return c.RefCount(p) },
			HostAttached: func(t *testing.T) bool { return plugged(t, u.QMP(), p) },
			GuestMounted: g.Mounted,
			BreakUnmount: g.BreakUnmount,
			BreakRemove:  h.Break,
			Unmounts:     g.Unmounts,
			Removes:      h.Removes,
		}
	})
	if c.Attached() != 0 {
		t.Fatalf("%d slots still taken", c.Attached())
	}
}
