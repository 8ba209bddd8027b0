package layerconv_test

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/internal/whiteouttest"
	"github.com/layervisor/layervisor/pkg/layerconv"
	"github.com/layervisor/layervisor/pkg/loop"
	"github.com/layervisor/layervisor/pkg/vhd"
)

// converter is layerconv.Convert or one of its passes.
type converter func(context.Context, layerconv.Opener, *os.File) (layerconv.Stats, error)

// convertWith converts entries with convert into a layer image in a temp
// directory and returns its path and the converter's error.
func convertWith(t *testing.T, entries []imagebuild.Entry, convert converter) (string, error) {
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
	_, err = convert(context.Background(), layerconv.OpenBytes(b), f)
	return p, err
}

// convertChecked converts entries to a layer image and has e2fsck check it.
func convertChecked(t *testing.T, entries []imagebuild.Entry) string {
	t.Helper()
	p, err := convertWith(t, entries, layerconv.Convert)
	if err != nil {
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
	var lowers []string
	for _, img := range images {
		lowers = append(lowers, layerconv.LowerDir(mountLayer(t, img)))
	}
	return overlay(t, lowers...)
}

// overlay mounts a read-only overlay of the directories (top-most first).
func overlay(t *testing.T, lowers ...string) string {
	t.Helper()
	opts := "lowerdir=" + strings.Join(lowers, ":")
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

// TestWhiteoutCasesOnePass converts each case's layer alone, without the
// two-pass fallback: the cases whose layer names something twice (other
// than a directory over a directory) must refuse, every other case must
// convert in one pass and show the spec's merged view. The two-pass
// conversion of every case is TestWhiteoutCasesMergedView's (the layer of
// all cases together needs it).
func TestWhiteoutCasesOnePass(t *testing.T) {
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "e2fsck")
	lowerL, _ := whiteouttest.Layers()
	lower := layerconv.LowerDir(mountLayer(t, convertChecked(t, lowerL)))
	onePass := 0
	for _, c := range whiteouttest.Cases {
		t.Run(c.Name, func(t *testing.T) {
			_, upperL := whiteouttest.LayersOf([]whiteouttest.Case{c})
			p, err := convertWith(t, upperL, layerconv.ConvertOnePass)
			want := namesTwice(upperL)
			if got := errors.Is(err, layerconv.ErrTwoPass); got != want || (err != nil && !got) {
				t.Fatalf("one-pass conversion: %v; want the two-pass fallback: %v", err, want)
			}
			if want {
				return
			}
			onePass++
			if out, err := exec.Command("e2fsck", "-n", "-f", p).CombinedOutput(); err != nil {
				t.Fatalf("e2fsck -n -f %s: %v\n%s", p, err, out)
			}
			merged := overlay(t, layerconv.LowerDir(mountLayer(t, p)), lower)
			all, err := whiteouttest.List(filepath.Join(merged, whiteouttest.Top))
			if err != nil {
				t.Fatal(err)
			}
			if d := whiteouttest.Diff(whiteouttest.Sub(all, c.Name), c.Want()); d != "" {
				t.Errorf("merged view differs from the spec:\n%s", d)
			}
		})
	}
	if onePass == 0 {
		t.Error("no case converted in one pass")
	}
}

// namesTwice reports whether a layer names something twice, other than a
// directory over a directory; an entry implies its parent directories.
func namesTwice(entries []imagebuild.Entry) bool {
	isDir := map[string]bool{}
	for _, e := range entries {
		name := path.Clean(e.Header.Name)
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if _, ok := isDir[d]; !ok {
				isDir[d] = true
			}
		}
		if strings.HasPrefix(path.Base(name), ".wh.") {
			continue
		}
		dir := e.Header.Typeflag == tar.TypeDir
		if was, ok := isDir[name]; ok && !(was && dir) {
			return true
		}
		isDir[name] = dir
	}
	return false
}
