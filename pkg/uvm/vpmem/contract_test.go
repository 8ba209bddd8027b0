package vpmem

import (
	"context"
	"testing"

	"github.com/layervisor/layervisor/internal/attachtest"
)

// The release contract against the fake host and guest: the device stays
// plugged at ref zero.
func TestContractFake(t *testing.T) {
	attachtest.Contract(t, func(t *testing.T) attachtest.Subject {
		c, h, g := setup(t, Config{Slots: 2})
		p := layers(t, 1, 8192)[0]
		return attachtest.Subject{
			Attach:   func(ctx context.Context) (attachtest.Handle, error) { return c.Attach(ctx, p) },
			RefCount: func() int { return c.RefCount(p) },
			HostAttached: func(*testing.T) bool {
				return h.Any(func(_ int, hp string) bool { return hp == p })
			},
			GuestMounted: func(_ *testing.T, gp string) bool { _, ok := g.Get(gp); return ok },
			BreakUnmount: func(_ *testing.T, gp string) func() {
				return g.BreakRemove(func(k string) bool { return k == gp }, errInjected)
			},
			Unmounts:  g.RemoveTries,
			KeepsHost: true,
		}
	})
}
