package share

import (
	"context"
	"testing"

	"github.com/layervisor/layervisor/internal/attachtest"
)

// The release contract against the fake host and guest, for a directory.
func TestContractFake(t *testing.T) {
	attachtest.Contract(t, func(t *testing.T) attachtest.Subject {
		c, h, g, _ := setup(t)
		dir := t.TempDir()
		return attachtest.Subject{
			Attach:   func(ctx context.Context) (attachtest.Handle, error) { return c.Attach(ctx, dir, true) },
			RefCount: func() int { return c.RefCount(dir, true) },
			HostAttached: func(*testing.T) bool {
				return h.Any(func(_ string, s served) bool { return s.dir == dir })
			},
			GuestMounted: func(_ *testing.T, gp string) bool { _, ok := g.Get(gp); return ok },
			BreakUnmount: func(_ *testing.T, gp string) func() {
				return g.BreakRemove(func(k string) bool { return k == gp }, errInjected)
			},
			BreakRemove: func(*testing.T) func() {
				return h.BreakRemove(func(string) bool { return true }, errInjected)
			},
			Unmounts: g.RemoveTries,
			Removes:  h.RemoveTries,
		}
	})
}
