package fakeuvm

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/layervisor/layervisor/internal/attachtest"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/layers"
)

// The fake keeps the controllers' release contract for each kind of
// attachment. It has no host/guest split: a key is attached and mounted
// while it has references (a VPMEM layer stays bound).
func TestContract(t *testing.T) {
	for _, kind := range []string{"vpmem", "scsi", "share"} {
		t.Run(kind, func(t *testing.T) {
			attachtest.Contract(t, func(t *testing.T) attachtest.Subject {
				f := New()
				dir := t.TempDir()
				p := filepath.Join(dir, "layer.vhd")
				if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
					t.Fatal(err)
				}
				key := "scsi:" + p
				attach := func(ctx context.Context) (layers.Attachment, error) {
					return f.AttachSCSI(ctx, p, diskformat.VHDFixed, true)
				}
				switch kind {
				case "vpmem":
					key = "vpmem:" + p
					attach = func(ctx context.Context) (layers.Attachment, error) { return f.AttachVPMem(ctx, p) }
				case "share":
					key = "share:" + dir + ":ro=true"
					attach = func(ctx context.Context) (layers.Attachment, error) { return f.AddShare(ctx, dir, true) }
				}
				refs := func() int {
					f.mu.Lock()
					defer f.mu.Unlock()
					return f.Refs[key]
				}
				return attachtest.Subject{
					Attach:   func(ctx context.Context) (attachtest.Handle, error) { return attach(ctx) },
					RefCount: refs,
					HostAttached: func(*testing.T) bool {
						f.mu.Lock()
						defer f.mu.Unlock()
						return f.Refs[key] > 0 || f.Bound[p]
					},
					GuestMounted: func(*testing.T, string) bool { return refs() > 0 },
					BreakUnmount: func(*testing.T, string) func() {
						f.mu.Lock()
						defer f.mu.Unlock()
						f.FailRelease = key
						return func() {
							f.mu.Lock()
							defer f.mu.Unlock()
							f.FailRelease = ""
						}
					},
					KeepsHost: kind == "vpmem",
				}
			})
		})
	}
}
