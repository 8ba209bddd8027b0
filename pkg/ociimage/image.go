// Package ociimage reads an image to import: an OCI image layout directory,
// an OCI layout tar, or a `docker save` tar. It verifies every digest it can
// — index, manifest, config, each layer blob and each layer's diffID — and
// streams layers uncompressed (gzip, zstd or none) with bounded memory.
package ociimage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"runtime"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types beyond those image-spec names.
const (
	mtDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mtDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtDockerConfig       = "application/vnd.docker.container.image.v1+json"
	mtDockerLayerGzip    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	mtDockerLayerTar     = "application/vnd.docker.image.rootfs.diff.tar"
	mtDockerForeign      = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
	refNameAnnotation    = "org.opencontainers.image.ref.name"
	containerdNameAnnot  = "io.containerd.image.name"
	maxJSONBlob          = 8 << 20
)

// Compression of a layer blob.
type Compression string

const (
	None Compression = "none"
	Gzip Compression = "gzip"
	Zstd Compression = "zstd"
)

// Errors callers may test with errors.Is.
var (
	ErrDigestMismatch = errors.New("digest mismatch")
	ErrUnsupported    = errors.New("unsupported")
	ErrInvalid        = errors.New("invalid image")
)

// Options select what to read.
type Options struct {
	// Platform is os/arch[/variant]; default linux/amd64 when an index
	// offers several.
	Platform string
	// Name selects one image of an archive holding several.
	Name string
}

// Layer describes one layer of the image, base layer first.
type Layer struct {
	Index       int
	Digest      digest.Digest // of the blob as stored (compressed); "" if the archive does not say
	DiffID      digest.Digest // of the uncompressed tar
	ChainID     digest.Digest
	MediaType   string
	Size        int64 // blob size in bytes
	Compression Compression
	blob        string // path of the blob in the source
}

// Image is an opened image. Close it when done.
type Image struct {
	Path           string
	Names          []string
	ManifestDigest digest.Digest
	ConfigDigest   digest.Digest
	Platform       string
	Config         ocispec.Image
	Layers         []Layer
	src            source
}

// Close releases the archive.
func (im *Image) Close() error { return im.src.Close() }

// Open reads and verifies an image's metadata.
func Open(p string, opts Options) (*Image, error) {
	src, err := openSource(p)
	if err != nil {
		return nil, fmt.Errorf("open image %s: %w", p, err)
	}
	im := &Image{Path: p, src: src}
	switch {
	case src.has("index.json"):
		err = im.readOCI(opts)
	case src.has("manifest.json"):
		err = im.readDocker(opts)
	default:
		err = fmt.Errorf("%w: neither index.json (OCI layout) nor manifest.json (docker save) found", ErrInvalid)
	}
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("image %s: %w", p, err)
	}
	return im, nil
}

// readJSON reads a small file, checks its digest when known, and decodes it.
func (im *Image) readJSON(name string, want digest.Digest, wantSize int64, v any) (digest.Digest, error) {
	rc, size, err := im.src.open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && want != "" {
			return "", fmt.Errorf("%w: blob %s is missing", ErrInvalid, want)
		}
		return "", err
	}
	defer rc.Close()
	if size > maxJSONBlob {
		return "", fmt.Errorf("%w: %s is %d bytes, more than %d", ErrInvalid, name, size, maxJSONBlob)
	}
	b, err := io.ReadAll(io.LimitReader(rc, maxJSONBlob+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	got := digest.FromBytes(b)
	if want != "" {
		if got != want {
			return "", fmt.Errorf("%w: blob %s has digest %s", ErrDigestMismatch, want, got)
		}
		if wantSize > 0 && int64(len(b)) != wantSize {
			return "", fmt.Errorf("%w: blob %s is %d bytes, descriptor says %d", ErrInvalid, want, len(b), wantSize)
		}
	}
	if err := json.Unmarshal(b, v); err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrInvalid, name, err)
	}
	return got, nil
}

func blobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("%w: digest %q: %v", ErrInvalid, d, err)
	}
	return path.Join("blobs", d.Algorithm().String(), d.Encoded()), nil
}

func (im *Image) readBlobJSON(d ocispec.Descriptor, v any) error {
	p, err := blobPath(d.Digest)
	if err != nil {
		return err
	}
	_, err = im.readJSON(p, d.Digest, d.Size, v)
	return err
}

func descName(d ocispec.Descriptor) string {
	if n := d.Annotations[containerdNameAnnot]; n != "" {
		return n
	}
	return d.Annotations[refNameAnnotation]
}

func (im *Image) readOCI(opts Options) error {
	var layout ocispec.ImageLayout
	if im.src.has("oci-layout") {
		if _, err := im.readJSON("oci-layout", "", 0, &layout); err != nil {
			return err
		}
		if layout.Version != ocispec.ImageLayoutVersion {
			return fmt.Errorf("%w: oci-layout version %q", ErrUnsupported, layout.Version)
		}
	}
	var idx ocispec.Index
	if _, err := im.readJSON("index.json", "", 0, &idx); err != nil {
		return err
	}
	cands := idx.Manifests
	if len(cands) == 0 {
		return fmt.Errorf("%w: index.json lists no manifests", ErrInvalid)
	}
	if opts.Name != "" {
		var named []ocispec.Descriptor
		for _, d := range cands {
			if n := descName(d); n == opts.Name || d.Annotations[refNameAnnotation] == opts.Name {
				named = append(named, d)
			}
		}
		// A single unnamed image can take any name.
		if len(named) == 0 && len(cands) == 1 && descName(cands[0]) == "" {
			named = cands
		}
		if len(named) == 0 && len(cands) > 1 {
			return fmt.Errorf("%w: no image named %q (have %v)", ErrInvalid, opts.Name, names(cands))
		}
		if len(named) > 0 {
			cands = named
		}
	}
	desc, err := im.pick(cands, opts.Platform)
	if err != nil {
		return err
	}
	if n := descName(desc); n != "" {
		im.Names = append(im.Names, n)
	}
	return im.readManifest(desc, opts.Platform)
}

func names(ds []ocispec.Descriptor) []string {
	var out []string
	for _, d := range ds {
		out = append(out, descName(d))
	}
	return out
}

// pick resolves nested indexes to one manifest descriptor for platform.
func (im *Image) pick(cands []ocispec.Descriptor, platform string) (ocispec.Descriptor, error) {
	want := platform
	if want == "" {
		want = "linux/" + runtime.GOARCH
	}
	for depth := 0; depth < 4; depth++ {
		var manifests []ocispec.Descriptor
		for _, d := range cands {
			switch d.MediaType {
			case ocispec.MediaTypeImageIndex, mtDockerManifestList:
				var sub ocispec.Index
				if err := im.readBlobJSON(d, &sub); err != nil {
					return ocispec.Descriptor{}, err
				}
				for _, m := range sub.Manifests {
					if m.Annotations == nil {
						m.Annotations = d.Annotations
					}
					manifests = append(manifests, m)
				}
			case ocispec.MediaTypeImageManifest, mtDockerManifest:
				manifests = append(manifests, d)
			default:
				if strings.Contains(d.MediaType, "attestation") || d.MediaType == "" {
					continue
				}
				return ocispec.Descriptor{}, fmt.Errorf("%w: manifest media type %q", ErrUnsupported, d.MediaType)
			}
		}
		nested := slices.ContainsFunc(manifests, func(d ocispec.Descriptor) bool {
			return d.MediaType == ocispec.MediaTypeImageIndex || d.MediaType == mtDockerManifestList
		})
		if nested {
			cands = manifests
			continue
		}
		// Drop attestation manifests (platform unknown/unknown).
		manifests = slices.DeleteFunc(manifests, func(d ocispec.Descriptor) bool {
			return d.Platform != nil && d.Platform.OS == "unknown"
		})
		if len(manifests) == 1 && (manifests[0].Platform == nil || platform == "") {
			return manifests[0], nil
		}
		var avail []string
		for _, d := range manifests {
			if d.Platform == nil {
				continue
			}
			p := platformString(d.Platform.OS, d.Platform.Architecture, d.Platform.Variant)
			avail = append(avail, p)
			if platformMatch(p, want) {
				return d, nil
			}
		}
		if len(manifests) == 1 && manifests[0].Platform == nil {
			return manifests[0], nil
		}
		return ocispec.Descriptor{}, fmt.Errorf("%w: no manifest for platform %s (available: %s)", ErrInvalid, want, strings.Join(avail, ", "))
	}
	return ocispec.Descriptor{}, fmt.Errorf("%w: indexes nested too deeply", ErrInvalid)
}

func platformString(os, arch, variant string) string {
	s := os + "/" + arch
	if variant != "" {
		s += "/" + variant
	}
	return s
}

// platformMatch compares os/arch and the variant when the request names one.
func platformMatch(have, want string) bool {
	if have == want {
		return true
	}
	h, w := strings.Split(have, "/"), strings.Split(want, "/")
	return len(w) == 2 && len(h) >= 2 && h[0] == w[0] && h[1] == w[1]
}

func (im *Image) readManifest(desc ocispec.Descriptor, platform string) error {
	var m ocispec.Manifest
	if err := im.readBlobJSON(desc, &m); err != nil {
		return err
	}
	im.ManifestDigest = desc.Digest
	switch m.Config.MediaType {
	case ocispec.MediaTypeImageConfig, mtDockerConfig:
	default:
		return fmt.Errorf("%w: config media type %q", ErrUnsupported, m.Config.MediaType)
	}
	if err := im.readBlobJSON(m.Config, &im.Config); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	im.ConfigDigest = m.Config.Digest
	im.Platform = platformString(im.Config.OS, im.Config.Architecture, im.Config.Variant)
	if platform != "" && !platformMatch(im.Platform, platform) {
		return fmt.Errorf("%w: image is for %s, not %s", ErrInvalid, im.Platform, platform)
	}
	diffIDs := im.Config.RootFS.DiffIDs
	if len(diffIDs) != len(m.Layers) {
		return fmt.Errorf("%w: config names %d layers (diff_ids) but the manifest has %d", ErrInvalid, len(diffIDs), len(m.Layers))
	}
	chain := identity.ChainIDs(slices.Clone(diffIDs))
	for i, l := range m.Layers {
		comp, err := layerCompression(l.MediaType)
		if err != nil {
			return fmt.Errorf("layer %d (%s): %w", i+1, l.Digest, err)
		}
		p, err := blobPath(l.Digest)
		if err != nil {
			return err
		}
		if !im.src.has(p) {
			return fmt.Errorf("%w: layer %d blob %s is missing", ErrInvalid, i+1, l.Digest)
		}
		im.Layers = append(im.Layers, Layer{Index: i, Digest: l.Digest, DiffID: diffIDs[i], ChainID: chain[i],
			MediaType: l.MediaType, Size: l.Size, Compression: comp, blob: p})
	}
	return nil
}

func layerCompression(mt string) (Compression, error) {
	switch mt {
	case ocispec.MediaTypeImageLayer, mtDockerLayerTar:
		return None, nil
	case ocispec.MediaTypeImageLayerGzip, mtDockerLayerGzip:
		return Gzip, nil
	case ocispec.MediaTypeImageLayerZstd:
		return Zstd, nil
	}
	if strings.Contains(mt, "nondistributable") || mt == mtDockerForeign {
		return "", fmt.Errorf("%w: non-distributable (foreign) layer %q cannot be imported from an archive", ErrUnsupported, mt)
	}
	return "", fmt.Errorf("%w: layer media type %q", ErrUnsupported, mt)
}

// dockerManifest is one entry of a docker-save manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func (im *Image) readDocker(opts Options) error {
	var entries []dockerManifest
	mdig, err := im.readJSON("manifest.json", "", 0, &entries)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return fmt.Errorf("%w: manifest.json lists no images", ErrInvalid)
	}
	pickIdx := -1
	if opts.Name != "" {
		for i, e := range entries {
			if slices.Contains(e.RepoTags, opts.Name) {
				pickIdx = i
			}
		}
	}
	if pickIdx < 0 {
		if len(entries) > 1 {
			var all []string
			for _, e := range entries {
				all = append(all, e.RepoTags...)
			}
			return fmt.Errorf("%w: archive holds %d images %v: choose one with a name", ErrInvalid, len(entries), all)
		}
		pickIdx = 0
	}
	e := entries[pickIdx]
	im.Names = e.RepoTags
	// A config named after its digest is checked against it.
	var want digest.Digest
	if hex := strings.TrimSuffix(path.Base(e.Config), ".json"); len(hex) == 64 {
		want = digest.NewDigestFromEncoded(digest.SHA256, hex)
	}
	cdig, err := im.readJSON(e.Config, want, 0, &im.Config)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	im.ConfigDigest = cdig
	entryJSON, _ := json.Marshal(e)
	im.ManifestDigest = digest.FromBytes(append(append([]byte(mdig.String()), '\n'), entryJSON...))
	im.Platform = platformString(im.Config.OS, im.Config.Architecture, im.Config.Variant)
	if opts.Platform != "" && !platformMatch(im.Platform, opts.Platform) {
		return fmt.Errorf("%w: image is for %s, not %s", ErrInvalid, im.Platform, opts.Platform)
	}
	diffIDs := im.Config.RootFS.DiffIDs
	if len(diffIDs) != len(e.Layers) {
		return fmt.Errorf("%w: config names %d layers (diff_ids) but manifest.json has %d", ErrInvalid, len(diffIDs), len(e.Layers))
	}
	chain := identity.ChainIDs(slices.Clone(diffIDs))
	for i, lp := range e.Layers {
		rc, size, err := im.src.open(lp)
		if err != nil {
			return fmt.Errorf("%w: layer %d file %s is missing", ErrInvalid, i+1, lp)
		}
		comp, err := sniffCompression(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %d (%s): %w", i+1, lp, err)
		}
		l := Layer{Index: i, DiffID: diffIDs[i], ChainID: chain[i], Size: size, Compression: comp, blob: lp}
		if strings.HasPrefix(lp, "blobs/sha256/") {
			l.Digest = digest.NewDigestFromEncoded(digest.SHA256, path.Base(lp))
		}
		switch comp {
		case Gzip:
			l.MediaType = mtDockerLayerGzip
		case Zstd:
			l.MediaType = ocispec.MediaTypeImageLayerZstd
		default:
			l.MediaType = mtDockerLayerTar
		}
		im.Layers = append(im.Layers, l)
	}
	return nil
}

func sniffCompression(r io.Reader) (Compression, error) {
	b := make([]byte, 4)
	n, err := io.ReadFull(r, b)
	if err != nil && n == 0 {
		return "", fmt.Errorf("%w: empty layer file", ErrInvalid)
	}
	switch {
	case n >= 2 && bytes.Equal(b[:2], []byte{0x1f, 0x8b}):
		return Gzip, nil
	case n == 4 && bytes.Equal(b, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd, nil
	}
	return None, nil
}

// Name identifies the layer in messages: its blob digest, or its diffID
// where the archive names no blob digest (docker-save tars).
func (l Layer) Name() string {
	if l.Digest != "" {
		return l.Digest.String()
	}
	return "diffID " + l.DiffID.String()
}

// OpenLayer returns layer i's uncompressed tar stream. The stream checks
// the blob digest and the diffID as it goes: the Read that reaches the end
// returns an error instead of io.EOF when either does not match, so a
// consumer that reads to the end cannot miss corruption.
func (im *Image) OpenLayer(ctx context.Context, i int) (io.ReadCloser, error) {
	if i < 0 || i >= len(im.Layers) {
		return nil, fmt.Errorf("layer index %d out of range", i)
	}
	l := im.Layers[i]
	rc, size, err := im.src.open(l.blob)
	if err != nil {
		return nil, fmt.Errorf("layer %d (%s): %w", i+1, l.blob, err)
	}
	if l.Size > 0 && size != l.Size {
		rc.Close()
		return nil, fmt.Errorf("%w: layer %d blob %s is %d bytes, manifest says %d", ErrInvalid, i+1, l.Digest, size, l.Size)
	}
	return newLayerReader(ctx, rc, l, fmt.Sprintf("layer %d (%s)", i+1, l.blob))
}
