package store_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/pkg/cimfs"
	"github.com/layervisor/layervisor/pkg/store"
	"github.com/layervisor/layervisor/pkg/wclayer/synth"
)

// gc removes Windows layers no image uses — a child before the parent it
// forks — and what a crashed import left, and keeps every layer of the
// images that remain readable.
func TestGCWindowsLayers(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	base := wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Base(w, wcBase) })
	c1 := wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, wcBase, 1) })
	c2 := wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, wcBase, 2) })
	short := wcImage(t, "win:short", base, c1)
	long := wcImage(t, "win:long", base, c1, c2)
	win := store.ImportOptions{Platform: "windows/amd64"}
	rs, err := s.Import(ctx, short, win)
	if err != nil {
		t.Fatal(err)
	}
	rl, err := s.Import(ctx, long, win)
	if err != nil || rl.Converted != 1 {
		t.Fatalf("second image: %+v %v", rl, err)
	}
	ls, err := s.Layers()
	if err != nil {
		t.Fatal(err)
	}
	cims := 0
	for _, l := range ls {
		if l.Kind == "cim" {
			cims++
		}
	}
	if cims != 3 {
		t.Fatalf("layer ls shows %d Windows layers, want 3: %+v", cims, ls)
	}
	// Leftovers of a crashed import: a temp region file, a CIM whose
	// folder never appeared.
	cimDir := filepath.Join(root, "wclayers", "cim-layers")
	os.WriteFile(filepath.Join(cimDir, ".cimfs-region-123.tmp"), []byte("x"), 0o600)
	topCIM := s.WindowsLayerCIM(rl.Image.ChainIDs[2])
	orphan := filepath.Join(cimDir, strings.Repeat("cd", 32)+".cim")
	b, _ := os.ReadFile(topCIM)
	os.WriteFile(orphan, b, 0o600) // the top's header: its region files are the top's own

	if err := s.RemoveImage(ctx, "win:long"); err != nil {
		t.Fatal(err)
	}
	rep, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The top layer goes (its folder and CIM), the orphan CIM too; the
	// short image's two layers stay and still read.
	if _, err := os.Stat(s.WindowsLayerDir(rl.Image.ChainIDs[2])); !os.IsNotExist(err) {
		t.Errorf("unused top layer kept: %v (report %+v)", err, rep)
	}
	for _, p := range []string{topCIM, orphan, filepath.Join(cimDir, ".cimfs-region-123.tmp")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s kept by gc", p)
		}
	}
	img, err := cimfs.Open(s.WindowsLayerCIM(rs.Image.ChainIDs[1]))
	if err != nil {
		t.Fatalf("the remaining image's top CIM: %v", err)
	}
	if _, err := img.Stat("Hives/SYSTEM_BASE"); err != nil {
		t.Errorf("the remaining image's view: %v", err)
	}
	img.Close()

	// Everything goes with the last image: folders, CIMs, region files.
	if err := s.RemoveImage(ctx, "win:short"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(cimDir)
	dirs, _ := os.ReadDir(filepath.Join(root, "wclayers"))
	var names []string
	for _, d := range dirs {
		names = append(names, d.Name())
	}
	if len(left) != 0 || len(dirs) != 2 {
		t.Fatalf("after removing every image: cim-layers holds %d files, wclayers %v", len(left), names)
	}
}
