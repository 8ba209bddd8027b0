package snapshotter

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/store"
)

// TestSnapshotterSuite runs containerd's conformance suite (v2.4) against
// the snapshotter under its own name, so no subtest is exempted: Rename
// renames a directory of a lower layer too. Active snapshots are scratch
// disks.
func TestSnapshotterSuite(t *testing.T) { suite(t) }

// TestSnapshotterSuiteNoScratch: the same with directory uppers
// (`serve --no-scratch`).
func TestSnapshotterSuiteNoScratch(t *testing.T) { suite(t, WithoutScratch()) }

func suite(t *testing.T, opts ...Option) {
	testutil.NeedRoot(t)
	testsuite.SnapshotterSuite(t, "layervisor", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		st, err := store.Open(root)
		if err != nil {
			return nil, nil, err
		}
		sn, err := New(ctx, st, opts...)
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}
