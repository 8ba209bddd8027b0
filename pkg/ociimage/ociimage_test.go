package ociimage_test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/pkg/ociimage"
)

func testImage(comp imagebuild.Compression) imagebuild.Image {
	return imagebuild.Image{Name: "example.com/test:1", Layers: []imagebuild.Layer{
		{Compression: comp, Entries: []imagebuild.Entry{imagebuild.Dir("etc", 0o755), imagebuild.File("etc/a", "alpha\n", 0o644)}},
		{Compression: comp, Entries: []imagebuild.Entry{imagebuild.RandomFile("big", 300<<10, 7), imagebuild.Whiteout("etc/a")}},
	}}
}

func write(t *testing.T, im imagebuild.Image, f imagebuild.Format) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "img-"+string(f))
	if err := im.Write(f, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// readAll reads every layer to its end, as an importer does.
func readAll(t *testing.T, im *ociimage.Image) error {
	t.Helper()
	for i := range im.Layers {
		rc, err := im.OpenLayer(context.Background(), i)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func TestRoundTripAllFormatsAndCompressions(t *testing.T) {
	for _, comp := range []imagebuild.Compression{imagebuild.None, imagebuild.Gzip, imagebuild.Zstd} {
		for _, f := range []imagebuild.Format{imagebuild.OCIDir, imagebuild.OCITar, imagebuild.DockerTar} {
			t.Run(string(comp)+"/"+string(f), func(t *testing.T) {
				p := write(t, testImage(comp), f)
				im, err := ociimage.Open(p, ociimage.Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer im.Close()
				if len(im.Layers) != 2 || len(im.Names) == 0 || im.Names[0] != "example.com/test:1" {
					t.Fatalf("layers %d names %v", len(im.Layers), im.Names)
				}
				if im.Layers[0].Compression != ociimage.Compression(comp) {
					t.Fatalf("compression %s, want %s", im.Layers[0].Compression, comp)
				}
				if im.Layers[1].ChainID == im.Layers[1].DiffID || im.Layers[0].ChainID != im.Layers[0].DiffID {
					t.Fatal("chain IDs wrong")
				}
				if im.Platform != "linux/amd64" {
					t.Fatalf("platform %q", im.Platform)
				}
				rc, err := im.OpenLayer(context.Background(), 0)
				if err != nil {
					t.Fatal(err)
				}
				tr := tar.NewReader(rc)
				var names []string
				for {
					h, err := tr.Next()
					if err != nil {
						break
					}
					names = append(names, h.Name)
				}
				rc.Close()
				if strings.Join(names, ",") != "etc/,etc/a" {
					t.Fatalf("layer 0 entries %v", names)
				}
				if err := readAll(t, im); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// corrupt rewrites the first layer blob of an OCI dir with f.
func firstLayerBlob(t *testing.T, dir string) string {
	t.Helper()
	im, err := ociimage.Open(dir, ociimage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	return filepath.Join(dir, "blobs", "sha256", im.Layers[1].Digest.Encoded())
}

func TestBadInput(t *testing.T) {
	cases := []struct {
		name   string
		comp   imagebuild.Compression
		mangle func(t *testing.T, dir string)
		want   string
		atRead bool // the error comes while streaming the layer
	}{
		{"corrupt gzip", imagebuild.Gzip, func(t *testing.T, d string) { flipByte(t, firstLayerBlob(t, d), 200) }, "gzip", true},
		{"truncated gzip", imagebuild.Gzip, func(t *testing.T, d string) { truncate(t, firstLayerBlob(t, d), 1000) }, "", true},
		{"truncated zstd", imagebuild.Zstd, func(t *testing.T, d string) { truncate(t, firstLayerBlob(t, d), 1000) }, "", true},
		{"corrupt zstd", imagebuild.Zstd, func(t *testing.T, d string) { flipByte(t, firstLayerBlob(t, d), 300) }, "zstd", true},
		{"digest mismatch (plain)", imagebuild.None, func(t *testing.T, d string) { flipByte(t, firstLayerBlob(t, d), 100000) }, "does not match", true},
		{"diffID mismatch", imagebuild.None, func(t *testing.T, d string) {
			editConfig(t, d, func(c *ocispec.Image) { c.RootFS.DiffIDs[1] = digest.FromString("other") })
		}, "diffID", true},
		{"missing blob", imagebuild.Gzip, func(t *testing.T, d string) { os.Remove(firstLayerBlob(t, d)) }, "missing", false},
		{"more diffIDs than layers", imagebuild.Gzip, func(t *testing.T, d string) {
			editConfig(t, d, func(c *ocispec.Image) { c.RootFS.DiffIDs = append(c.RootFS.DiffIDs, digest.FromString("x")) })
		}, "config names 3 layers", false},
		{"unknown media type", imagebuild.Gzip, func(t *testing.T, d string) {
			editManifest(t, d, func(m *ocispec.Manifest) { m.Layers[0].MediaType = "application/x-weird" })
		}, "application/x-weird", false},
		{"foreign layer", imagebuild.Gzip, func(t *testing.T, d string) {
			editManifest(t, d, func(m *ocispec.Manifest) { m.Layers[0].MediaType = ocispec.MediaTypeImageLayerNonDistributableGzip })
		}, "non-distributable", false},
		{"manifest digest mismatch", imagebuild.Gzip, func(t *testing.T, d string) {
			editIndex(t, d, func(ix *ocispec.Index) { ix.Manifests[0].Digest = digest.FromString("nope") })
		}, "missing", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := write(t, testImage(tc.comp), imagebuild.OCIDir)
			tc.mangle(t, dir)
			im, err := ociimage.Open(dir, ociimage.Options{})
			if err == nil {
				defer im.Close()
				err = readAll(t, im)
				if err != nil && !tc.atRead {
					t.Fatalf("error only at read time: %v", err)
				}
			}
			if err == nil {
				t.Fatal("bad image accepted")
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			if !tc.atRead && !strings.Contains(err.Error(), dir) {
				t.Fatalf("error %q does not name the image path", err)
			}
		})
	}
}

func TestPlatformNotFound(t *testing.T) {
	p := write(t, testImage(imagebuild.Gzip), imagebuild.OCITar)
	_, err := ociimage.Open(p, ociimage.Options{Platform: "linux/arm64"})
	if err == nil || !strings.Contains(err.Error(), "linux/arm64") || !strings.Contains(err.Error(), "linux/amd64") {
		t.Fatalf("platform mismatch: %v", err)
	}
}

func TestCompressedArchiveRefused(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.tar.gz")
	os.WriteFile(p, []byte{0x1f, 0x8b, 8, 0, 0, 0}, 0o644)
	if _, err := ociimage.Open(p, ociimage.Options{}); err == nil || !strings.Contains(err.Error(), "decompress it first") {
		t.Fatalf("compressed archive: %v", err)
	}
}

func TestCancelledRead(t *testing.T) {
	p := write(t, testImage(imagebuild.Gzip), imagebuild.OCIDir)
	im, err := ociimage.Open(p, ociimage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rc, err := im.OpenLayer(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}

func flipByte(t *testing.T, p string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	f.WriteAt(b, off)
}

func truncate(t *testing.T, p string, size int64) {
	t.Helper()
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
}

// rewriteBlob replaces a JSON blob and returns its new descriptor digest/size.
func rewriteBlob(t *testing.T, dir string, d digest.Digest, v any) (digest.Digest, int64) {
	t.Helper()
	b, _ := json.Marshal(v)
	nd := digest.FromBytes(b)
	os.Remove(filepath.Join(dir, "blobs", "sha256", d.Encoded()))
	os.WriteFile(filepath.Join(dir, "blobs", "sha256", nd.Encoded()), b, 0o644)
	return nd, int64(len(b))
}

func readJSON(t *testing.T, p string, v any) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func editIndex(t *testing.T, dir string, f func(*ocispec.Index)) {
	var ix ocispec.Index
	readJSON(t, filepath.Join(dir, "index.json"), &ix)
	f(&ix)
	b, _ := json.Marshal(ix)
	os.WriteFile(filepath.Join(dir, "index.json"), b, 0o644)
}

func editManifest(t *testing.T, dir string, f func(*ocispec.Manifest)) {
	editIndex(t, dir, func(ix *ocispec.Index) {
		var m ocispec.Manifest
		readJSON(t, filepath.Join(dir, "blobs", "sha256", ix.Manifests[0].Digest.Encoded()), &m)
		f(&m)
		ix.Manifests[0].Digest, ix.Manifests[0].Size = rewriteBlob(t, dir, ix.Manifests[0].Digest, m)
	})
}

func editConfig(t *testing.T, dir string, f func(*ocispec.Image)) {
	editManifest(t, dir, func(m *ocispec.Manifest) {
		var c ocispec.Image
		readJSON(t, filepath.Join(dir, "blobs", "sha256", m.Config.Digest.Encoded()), &c)
		f(&c)
		m.Config.Digest, m.Config.Size = rewriteBlob(t, dir, m.Config.Digest, c)
	})
}

// A docker-save layer has no blob digest: messages name its diffID.
func TestLayerName(t *testing.T) {
	d := digest.FromString("x")
	if got := (ociimage.Layer{DiffID: d}).Name(); got != "diffID "+d.String() {
		t.Errorf("Name() = %q", got)
	}
	if got := (ociimage.Layer{Digest: d, DiffID: digest.FromString("y")}).Name(); got != d.String() {
		t.Errorf("Name() = %q", got)
	}
}
