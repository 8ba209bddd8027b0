package store_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/store"
)

// A new container appears durably: its record and its scratch clone are
// flushed in the temp directory before the rename that publishes it, and
// containers/ after it.
func TestCreateContainerPublishesDurably(t *testing.T) {
	testutil.NeedTool(t, "mkfs.ext4")
	ctx := context.Background()
	root := t.TempDir()
	s, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, build(t, small("x:1", "a")), store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	steps := testutil.WatchSync(t, root)
	for _, c := range []struct {
		name string
		opts store.ContainerOptions
		file string
	}{
		{"raw", store.ContainerOptions{ScratchSize: 64 << 20}, layers.ScratchFile},
		{"vhdx", store.ContainerOptions{ScratchSize: 64 << 20, ScratchFormat: "vhdx"}, layers.ScratchVHDX},
	} {
		if _, err := s.CreateContainer(ctx, c.name, "x:1", c.opts); err != nil {
			t.Fatal(err)
		}
		tmp := steps.Published(t, filepath.Join(root, "containers", c.name), c.file, "container.json")
		if filepath.Dir(tmp) != filepath.Join(root, "tmp") {
			t.Errorf("%s published from %q, not from tmp/", c.name, tmp)
		}
	}
}
