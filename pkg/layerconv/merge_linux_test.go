package layerconv_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/internal/whiteouttest"
	"github.com/layervisor/layervisor/pkg/imagebuild"
	"github.com/layervisor/layervisor/pkg/layerconv"
	"github.com/layervisor/layervisor/pkg/loop"
	"github.com/layervisor/layervisor/pkg/vhd"
)

// convertChecked converts entries to a layer image and has e2fsck check it.
func convertChecked(t *testing.T, entries []imagebuild.Entry) string {
	t.Helper()
	b, err := whiteouttest.Tar(entries)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "layer.vhd")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := layerconv.Convert(context.Background(), layerconv.OpenBytes(b), f); err != nil {
		t.Fatal(err)
	}
	testutil.NeedTool(t, "e2fsck")
	if out, err := exec.Command("e2fsck", "-n", "-f", p).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -n -f %s: %v\n%s", p, err, out)
	}
	return p
}

// mountLayer loop-mounts a layer image read-only, as the host does, and
// returns its mount point.
func mountLayer(t *testing.T, img string) string {
	t.Helper()
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := loop.Attach(img, loop.Options{ReadOnly: true, SizeLimit: st.Size() - vhd.FooterSize})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	mp := t.TempDir()
	if err := unix.Mount(dev.Path, mp, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mp, 0) })
	return mp
}

// mergeLayers mounts the layers (top-most first) and a read-only overlay of
// their LowerDirs, and returns the overlay.
func mergeLayers(t *testing.T, images ...string) string {
	t.Helper()
	opts := "lowerdir="
	for i, img := range images {
		if i > 0 {
			opts += ":"
		}
		opts += layerconv.LowerDir(mountLayer(t, img))
	}
	merged := t.TempDir()
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(merged, 0) })
	return merged
}

// TestWhiteoutCasesMergedView converts the whiteout table's two layers,
// overlays them for real and compares every case's merged tree (names,
// types, modes, link targets, contents) with the spec's view.
func TestWhiteoutCasesMergedView(t *testing.T) {
	testutil.NeedRoot(t)
	lowerL, upperL := whiteouttest.Layers()
	merged := mergeLayers(t, convertChecked(t, upperL), convertChecked(t, lowerL))

	// The container's root is exactly the image's: no lost+found.
	ents, err := os.ReadDir(merged)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 1 || names[0] != whiteouttest.Top {
		t.Errorf("merged root holds %v, want only [%s]", names, whiteouttest.Top)
	}

	all, err := whiteouttest.List(filepath.Join(merged, whiteouttest.Top))
	if err != nil {
		t.Fatal(err)
	}
	var caseDirs []string
	for p := range all {
		if filepath.Dir(p) == "." {
			caseDirs = append(caseDirs, p)
		}
	}
	if len(caseDirs) != len(whiteouttest.Cases) {
		sort.Strings(caseDirs)
		t.Errorf("merged view has %d case directories, want %d: %v", len(caseDirs), len(whiteouttest.Cases), caseDirs)
	}
	for _, c := range whiteouttest.Cases {
		t.Run(c.Name, func(t *testing.T) {
			if d := whiteouttest.Diff(whiteouttest.Sub(all, c.Name), c.Want()); d != "" {
				t.Errorf("merged view differs from the spec:\n%s", d)
			}
		})
	}
}
