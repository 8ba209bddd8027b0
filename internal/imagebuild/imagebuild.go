// Package imagebuild writes real OCI images for tests, the demo and
// benchmarks: layers declared entry by entry (files, directories, links,
// whiteouts, opaque directories, or raw tar headers for bad-input tests),
// each compressed with gzip, zstd or not at all, written as an OCI layout
// directory, an OCI layout tar or a `docker save` tar. Content is streamed,
// so large generated files cost no memory.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Compression of a layer blob.
type Compression string

const (
	None Compression = "none"
	Gzip Compression = "gzip"
	Zstd Compression = "zstd"
)

// Format of the written image.
type Format string

const (
	OCIDir    Format = "oci-dir"
	OCITar    Format = "oci-tar"
	DockerTar Format = "docker-tar"
)

// Entry is one tar entry of a layer.
type Entry struct {
	Header tar.Header
	// Content of a regular file; when nil and Header.Size > 0 the content
	// is Header.Size pseudo-random bytes from Seed.
	Content []byte
	Seed    uint64
}

var epoch = time.Unix(1700000000, 0).UTC()

// File is a regular file with content.
func File(name, content string, mode int64) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(content)), ModTime: epoch}, Content: []byte(content)}
}

// RandomFile is a regular file of size pseudo-random bytes.
func RandomFile(name string, size int64, seed uint64) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: epoch}, Seed: seed}
}

// Dir is a directory.
func Dir(name string, mode int64) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch}}
}

// Symlink is a symbolic link.
func Symlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: epoch}}
}

// Hardlink is a hard link to an earlier entry of the same layer.
func Hardlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: epoch}}
}

// Whiteout deletes p (from lower layers).
func Whiteout(p string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: path.Join(path.Dir(p), ".wh."+path.Base(p)), Mode: 0o644, ModTime: epoch}}
}

// Opaque hides everything lower layers have in directory dir.
func Opaque(dir string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: path.Join(dir, ".wh..wh..opq"), Mode: 0o644, ModTime: epoch}}
}

// Raw is any tar header, for bad-input tests (device nodes, "../x", …).
func Raw(h tar.Header) Entry { return Entry{Header: h} }

// Layer is a list of entries and how to compress them.
type Layer struct {
	Entries     []Entry
	Compression Compression
}

// Image is an image to write.
type Image struct {
	Name   string // reference, e.g. "demo:latest"
	OS     string // default linux
	Arch   string // default amd64
	Layers []Layer
	Cmd    []string
	// Config, when set, is the image's run config as a whole (Cmd above
	// is ignored then); by default Cmd and a standard PATH.
	Config *ocispec.ImageConfig
}

// blob is a written layer.
type blob struct {
	path      string // temp file holding the (compressed) blob
	digest    digest.Digest
	diffID    digest.Digest
	size      int64
	mediaType string
}

// Write writes the image in the given format to out (a directory for
// OCIDir, a file otherwise).
func (im Image) Write(format Format, out string) error {
	tmp, err := os.MkdirTemp("", "imagebuild-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var blobs []blob
	for i, l := range im.Layers {
		b, err := writeLayer(filepath.Join(tmp, fmt.Sprintf("layer%d", i)), l)
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		blobs = append(blobs, b)
	}
	cfg := im.config(blobs)
	cfgJSON, _ := json.Marshal(cfg)
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfgJSON), Size: int64(len(cfgJSON))}
	man := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc}
	for _, b := range blobs {
		man.Layers = append(man.Layers, ocispec.Descriptor{MediaType: b.mediaType, Digest: b.digest, Size: b.size})
	}
	manJSON, _ := json.Marshal(man)
	manDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manJSON), Size: int64(len(manJSON)),
		Platform: &ocispec.Platform{OS: cfg.OS, Architecture: cfg.Architecture}}
	if im.Name != "" {
		manDesc.Annotations = map[string]string{"io.containerd.image.name": im.Name, "org.opencontainers.image.ref.name": refTag(im.Name)}
	}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{manDesc}}
	idxJSON, _ := json.Marshal(idx)

	files := []member{}
	switch format {
	case OCIDir, OCITar:
		files = append(files,
			member{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
			member{name: "index.json", data: idxJSON},
			member{name: blobName(manDesc.Digest), data: manJSON},
			member{name: blobName(cfgDesc.Digest), data: cfgJSON})
		for _, b := range blobs {
			files = append(files, member{name: blobName(b.digest), file: b.path, size: b.size})
		}
	case DockerTar:
		type dm struct {
			Config   string
			RepoTags []string
			Layers   []string
		}
		e := dm{Config: cfgDesc.Digest.Encoded() + ".json"}
		if im.Name != "" {
			e.RepoTags = []string{im.Name}
		}
		files = append(files, member{name: e.Config, data: cfgJSON})
		for _, b := range blobs {
			lp := b.diffID.Encoded() + "/layer.tar"
			e.Layers = append(e.Layers, lp)
			files = append(files, member{name: lp, file: b.path, size: b.size})
		}
		mj, _ := json.Marshal([]dm{e})
		files = append(files, member{name: "manifest.json", data: mj})
	default:
		return fmt.Errorf("unknown format %q", format)
	}
	if format == OCIDir {
		return writeDir(out, files)
	}
	return writeTar(out, files)
}

func refTag(name string) string {
	for i := len(name) - 1; i >= 0 && name[i] != '/'; i-- {
		if name[i] == ':' {
			return name[i+1:]
		}
	}
	return "latest"
}

func blobName(d digest.Digest) string { return "blobs/sha256/" + d.Encoded() }

func (im Image) config(blobs []blob) ocispec.Image {
	cfg := ocispec.Image{Platform: ocispec.Platform{OS: im.OS, Architecture: im.Arch}, Created: &epoch}
	if cfg.OS == "" {
		cfg.OS = "linux"
	}
	if cfg.Architecture == "" {
		cfg.Architecture = "amd64"
	}
	cfg.RootFS.Type = "layers"
	for _, b := range blobs {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, b.diffID)
	}
	cfg.Config.Cmd = im.Cmd
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if im.Config != nil {
		cfg.Config = *im.Config
	}
	return cfg
}

// writeLayer streams the layer's tar through a compressor into a file,
// hashing both forms.
func writeLayer(p string, l Layer) (blob, error) {
	f, err := os.Create(p)
	if err != nil {
		return blob{}, err
	}
	defer f.Close()
	blobHash := sha256.New()
	counted := &countWriter{w: io.MultiWriter(f, blobHash)}
	var comp io.WriteCloser
	mt := ocispec.MediaTypeImageLayer
	switch l.Compression {
	case Gzip:
		comp, mt = gzip.NewWriter(counted), ocispec.MediaTypeImageLayerGzip
	case Zstd:
		zw, err := zstd.NewWriter(counted, zstd.WithEncoderConcurrency(1))
		if err != nil {
			return blob{}, err
		}
		comp, mt = zw, ocispec.MediaTypeImageLayerZstd
	case None, "":
		comp = nopCloser{counted}
	default:
		return blob{}, fmt.Errorf("unknown compression %q", l.Compression)
	}
	diffHash := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(comp, diffHash))
	modes := map[string]int64{}
	for _, e := range l.Entries {
		h := e.Header
		// A hard link's header carries its file's metadata, as tar tools
		// write it: containerd's applier sets it on the shared inode.
		if h.Typeflag == tar.TypeReg {
			modes[h.Name] = h.Mode
		} else if h.Typeflag == tar.TypeLink && h.Mode == 0 {
			h.Mode = modes[h.Linkname]
		}
		if err := tw.WriteHeader(&h); err != nil {
			return blob{}, fmt.Errorf("entry %q: %w", h.Name, err)
		}
		if h.Typeflag != tar.TypeReg || h.Size == 0 {
			continue
		}
		var src io.Reader
		if e.Content != nil {
			src = bytes.NewReader(e.Content)
		} else {
			src = io.LimitReader(&randReader{r: rand.NewChaCha8(seed32(e.Seed))}, h.Size)
		}
		if _, err := io.Copy(tw, src); err != nil {
			return blob{}, fmt.Errorf("entry %q: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return blob{}, err
	}
	if err := comp.Close(); err != nil {
		return blob{}, err
	}
	return blob{path: p, digest: digestOf(blobHash), diffID: digestOf(diffHash), size: counted.n, mediaType: mt}, nil
}

func digestOf(h hash.Hash) digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil)))
}

func seed32(s uint64) [32]byte {
	var b [32]byte
	for i := 0; i < 4; i++ {
		v := s + uint64(i)*0x9e3779b97f4a7c15
		for j := 0; j < 8; j++ {
			b[i*8+j] = byte(v >> (8 * j))
		}
	}
	return b
}

type randReader struct{ r *rand.ChaCha8 }

// NewRandom returns the endless pseudo-random stream RandomFile content
// with this seed is the beginning of.
func NewRandom(seed uint64) io.Reader { return &randReader{r: rand.NewChaCha8(seed32(seed))} }

func (r *randReader) Read(p []byte) (int, error) { return r.r.Read(p) }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

type member struct {
	name string
	data []byte
	file string
	size int64
}

func writeDir(dir string, files []member) error {
	for _, m := range files {
		p := filepath.Join(dir, filepath.FromSlash(m.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if m.file != "" {
			if err := copyFile(m.file, p); err != nil {
				return err
			}
			continue
		}
		if err := os.WriteFile(p, m.data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func writeTar(out string, files []member) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	dirs := map[string]bool{}
	for _, m := range files {
		for d := path.Dir(m.name); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var sorted []string
	for d := range dirs {
		sorted = append(sorted, d)
	}
	slices.Sort(sorted)
	for _, d := range sorted {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch}); err != nil {
			f.Close()
			return err
		}
	}
	for _, m := range files {
		size := int64(len(m.data))
		if m.file != "" {
			size = m.size
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: m.name, Mode: 0o644, Size: size, ModTime: epoch}); err != nil {
			f.Close()
			return err
		}
		if m.file != "" {
			in, err := os.Open(m.file)
			if err != nil {
				f.Close()
				return err
			}
			_, err = io.Copy(tw, in)
			in.Close()
			if err != nil {
				f.Close()
				return err
			}
		} else if _, err := tw.Write(m.data); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
