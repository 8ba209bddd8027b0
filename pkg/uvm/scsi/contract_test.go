package scsi

import (
	"context"
	"testing"

	"github.com/layervisor/layervisor/internal/attachtest"
)

// The release contract against the fake host and guest.
func TestContractFake(t *testing.T) {
	attachtest.Contract(t, func(t *testing.T) attachtest.Subject {
		c, h, g := setup(t, 1)
		p := files(t, 1)[0]
		return attachtest.Subject{
			Attach:   func(ctx context.Context) (attachtest.Handle, error) { return c.Attach(ctx, p, mounted) },
			RefCount: func() int { return c.RefCount(p) },
			HostAttached: func(*testing.T) bool {
				return h.Any(func(_ Slot, hp string) bool { return hp == p })
			},
			GuestMounted: func(_ *testing.T, gp string) bool { _, ok := g.Get(gp); return ok },
			BreakUnmount: func(_ *testing.T, gp string) func() {
				return g.BreakRemove(func(k string) bool { return k == gp }, errInjected)
			},
			BreakRemove: func(*testing.T) func() {
				return h.BreakRemove(func(Slot) bool { return true }, errInjected)
			},
			Unmounts: g.RemoveTries,
			Removes:  h.RemoveTries,
		}
	})
}
