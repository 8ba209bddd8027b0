package store_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/pkg/cimfs"
	"github.com/layervisor/layervisor/pkg/ociimage"
	"github.com/layervisor/layervisor/pkg/store"
	"github.com/layervisor/layervisor/pkg/wclayer/synth"
)

var wcBase = synth.Options{Seed: 11, Files: 150, Bytes: 1 << 20}

// wcLayer turns a synthetic Windows layer tar into an imagebuild layer,
// headers (PAX records included) as they are.
func wcLayer(t *testing.T, write func(io.Writer) (synth.Stats, error)) imagebuild.Layer {
	var b bytes.Buffer
	if _, err := write(&b); err != nil {
		t.Fatal(err)
	}
	var l imagebuild.Layer
	tr := tar.NewReader(&b)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return l
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		l.Entries = append(l.Entries, imagebuild.Entry{Header: *h, Content: data})
	}
}

func wcImage(t *testing.T, name string, layers ...imagebuild.Layer) string {
	out := filepath.Join(t.TempDir(), "img")
	im := imagebuild.Image{Name: name, OS: "windows", Arch: "amd64", Layers: layers}
	if err := im.Write(imagebuild.OCIDir, out); err != nil {
		t.Fatal(err)
	}
	return out
}

func list(t *testing.T, dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestImportWindowsImage(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	base := wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Base(w, wcBase) })
	c1 := wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, wcBase, 1) })
	c2 := wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, wcBase, 2) })
	c1.Compression = imagebuild.Gzip
	path := wcImage(t, "win:1", base, c1, c2)

	res, err := s.Import(ctx, path, store.ImportOptions{Platform: "windows/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Converted != 3 || res.Reused != 0 || res.Image.Platform != "windows/amd64" {
		t.Fatalf("first import: %+v", res)
	}
	// Chain IDs are the image's, and each layer is a folder plus a CIM.
	oi, err := ociimage.Open(path, ociimage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range oi.Layers {
		if res.Image.ChainIDs[i] != l.ChainID {
			t.Errorf("layer %d: chain ID %s, want %s", i, res.Image.ChainIDs[i], l.ChainID)
		}
		if _, err := os.Stat(filepath.Join(s.WindowsLayerDir(l.ChainID), "Hives", "SYSTEM_BASE")); err != nil {
			t.Errorf("layer %d: %v", i, err)
		}
	}
	oi.Close()
	top, err := cimfs.Open(s.WindowsLayerCIM(res.Image.ChainIDs[2]))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := top.Stat("Files/Program Files/SynthChild"); err != nil {
		t.Errorf("top CIM lacks the children's files: %v", err)
	}
	if f, err := top.Stat("layout"); err != nil || f.Size != int64(len("vhd-with-hives\n")) {
		t.Errorf("top CIM lacks the base's layout: %v", err)
	}
	top.Close()

	// Again: everything reused.
	res2, err := s.Import(ctx, path, store.ImportOptions{Platform: "windows/amd64"})
	if err != nil || res2.Converted != 0 || res2.Reused != 3 {
		t.Fatalf("second import: %+v %v", res2, err)
	}
	// Another image sharing base and c1: only its top layer is new.
	path2 := wcImage(t, "win:2", base, c1, wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, wcBase, 3) }))
	res3, err := s.Import(ctx, path2, store.ImportOptions{})
	if err != nil || res3.Converted != 1 || res3.Reused != 2 || res3.Image.ChainIDs[1] != res.Image.ChainIDs[1] {
		t.Fatalf("shared-layer import: %+v %v", res3, err)
	}

	// A broken top layer: the import fails, names the entry, and leaves no
	// layer, CIM, temp file or image record.
	cims := list(t, filepath.Join(s.Root(), "wclayers", "cim-layers"))
	layers := list(t, filepath.Join(s.Root(), "wclayers"))
	bad := imagebuild.Layer{Entries: []imagebuild.Entry{
		{Header: tar.Header{Name: "Files/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{Header: tar.Header{Name: "Files/x.txt", Typeflag: tar.TypeReg, Size: 1, PAXRecords: map[string]string{"MSWINDOWS.fileattr": "x"}}, Content: []byte("x")},
	}}
	badPath := wcImage(t, "win:bad", base, c1, wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, wcBase, 4) }), bad)
	_, err = s.Import(ctx, badPath, store.ImportOptions{})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(`"Files/x.txt"`)) {
		t.Fatalf("bad layer: err = %v", err)
	}
	if got := list(t, filepath.Join(s.Root(), "wclayers", "cim-layers")); !slices.Equal(got, cims) {
		t.Errorf("cim-layers after a failed import: %q, want %q", got, cims)
	}
	if got := list(t, filepath.Join(s.Root(), "wclayers")); !slices.Equal(got, layers) {
		t.Errorf("wclayers after a failed import: %q, want %q", got, layers)
	}
	if got := list(t, filepath.Join(s.Root(), "tmp")); len(got) != 0 {
		t.Errorf("tmp after a failed import: %q", got)
	}
	if _, err := s.Image("win:bad"); err == nil {
		t.Error("failed import recorded its image")
	}
	ims, err := s.Images()
	if err != nil || len(ims) != 2 {
		t.Errorf("images: %v %v", ims, err)
	}
}

// TestImportWindowsConcurrent imports one image from two goroutines: both
// succeed and each layer is made once.
func TestImportWindowsConcurrent(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	path := wcImage(t, "win:c",
		wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Base(w, wcBase) }),
		wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Child(w, wcBase, 1) }))
	results := make(chan store.ImportResult, 2)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			res, err := s.Import(context.Background(), path, store.ImportOptions{})
			results <- res
			errs <- err
		}()
	}
	converted := 0
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		converted += (<-results).Converted
	}
	if converted != 2 {
		t.Errorf("layers converted %d times, want 2 (once each)", converted)
	}
}
