package store_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/pkg/layerconv"
	"github.com/layervisor/layervisor/pkg/store"
)

// markOldFormat rewrites a layer's record as an earlier version wrote it
// (no format field).
func markOldFormat(t *testing.T, s *store.Store, li store.LayerInfo) {
	t.Helper()
	li.Format = 0
	b, err := json.Marshal(li)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.LayerDir(li.ChainID), "layer.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Layers in an older image format count as absent: import converts them
// again, gc removes them unless a container uses them, and an import that
// would have to replace one in use says which container holds it.
func TestOldFormatLayersAreReplaced(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := build(t, small("x:1", "a"))
	if _, err := s.Import(ctx, p, store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	ls, err := s.Layers()
	if err != nil || len(ls) != 3 {
		t.Fatalf("layers: %v %v", ls, err)
	}
	for _, li := range ls {
		if li.Format != layerconv.FormatVersion {
			t.Fatalf("layer %s records format %d, want %d", li.ChainID, li.Format, layerconv.FormatVersion)
		}
	}
	old := ls[0]
	markOldFormat(t, s, old)
	res, err := s.Import(ctx, p, store.ImportOptions{})
	if err != nil || res.Converted != 1 || res.Reused != 2 {
		t.Fatalf("re-import over an old-format layer: %+v %v (want 1 converted, 2 reused)", res, err)
	}

	markOldFormat(t, s, old)
	rep, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.RemovedLayers, []digest.Digest{old.ChainID}) {
		t.Fatalf("gc removed %v, want only the old-format layer %s", rep.RemovedLayers, old.ChainID)
	}
	if _, err := s.Import(ctx, p, store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}

	// A container holds the layer: gc keeps it, import refuses to replace it.
	if _, err := s.CreateContainer(ctx, "c", "x:1", store.ContainerOptions{ScratchSize: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	markOldFormat(t, s, old)
	if rep, err := s.GC(ctx); err != nil || len(rep.RemovedLayers) != 0 {
		t.Fatalf("gc with the layer in a container: removed %v, %v", rep.RemovedLayers, err)
	}
	_, err = s.Import(ctx, p, store.ImportOptions{})
	if err == nil || !strings.Contains(err.Error(), "old format") || !strings.Contains(err.Error(), "container c") {
		t.Fatalf("import over an old-format layer in use: want an error naming container c, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.LayerDir(old.ChainID), "layer.vhd")); err != nil {
		t.Fatalf("layer in use was removed: %v", err)
	}
}

// The container's root lists exactly the image's entries: the layer
// images' lost+found stays out of it.
func TestContainerRootHasOnlyImageEntries(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, build(t, small("x:1", "a")), store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateContainer(ctx, "c", "x:1", store.ContainerOptions{ScratchSize: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	defer s.RemoveContainer(ctx, "c")
	root, err := s.Mount(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"a", "b", "c"}) {
		t.Fatalf("container root lists %v, want [a b c]", names)
	}
	if err := s.Unmount(ctx, "c"); err != nil {
		t.Fatal(err)
	}
}
