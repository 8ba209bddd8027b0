package store_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/pkg/store"
)

// poison replaces the layer chainID's image with the one of layer from and
// rewrites its record as a writer that did not verify it would (no
// "verified"): what the snapshotter stored when a client committed a
// directory under someone else's chain ID, before layers were verified.
func poison(t *testing.T, s *store.Store, chainID, from digest.Digest) {
	t.Helper()
	b, err := os.ReadFile(s.LayerImage(from))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.LayerImage(chainID), b, 0o644); err != nil {
		t.Fatal(err)
	}
	li, err := s.Layer(chainID)
	if err != nil {
		t.Fatal(err)
	}
	li.Verified, li.Parent = false, ""
	j, err := json.Marshal(li)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(j), "verified") {
		t.Fatalf("record still says verified: %s", j)
	}
	if err := os.WriteFile(filepath.Join(s.LayerDir(chainID), "layer.json"), j, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Import records each layer as verified (diff ID computed from the bytes,
// chain ID over the parent's) and reuses only layers so recorded: a layer
// stored under the same chain ID without that check is converted again.
func TestImportReusesOnlyVerifiedLayers(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Import(ctx, build(t, small("x:1", "real")), store.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var parent digest.Digest
	for i, c := range res.Image.ChainIDs {
		li, err := s.Layer(c)
		if err != nil {
			t.Fatal(err)
		}
		if !li.Verified || li.DiffID != res.Image.DiffIDs[i] || li.Parent != parent || store.ChainID(parent, li.DiffID) != c {
			t.Errorf("layer %d record %+v: want verified, diff ID %s over %q", i, li, res.Image.DiffIDs[i], parent)
		}
		parent = c
	}
	other, err := s.Import(ctx, build(t, small("y:1", "evil")), store.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	base := res.Image.ChainIDs[0]
	poison(t, s, base, other.Image.ChainIDs[0])
	if s.HasLayer(base) {
		t.Errorf("HasLayer reports the unverified layer")
	}

	res2, err := s.Import(ctx, build(t, small("x:1", "real")), store.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Converted != 1 || res2.Reused != 2 {
		t.Errorf("re-import over an unverified layer: converted %d, reused %d; want 1, 2", res2.Converted, res2.Reused)
	}
	li, err := s.Layer(base)
	if err != nil || !li.Verified {
		t.Errorf("base layer after re-import: %+v, %v; want verified", li, err)
	}
	img, _ := os.ReadFile(s.LayerImage(base))
	evil, _ := os.ReadFile(s.LayerImage(other.Image.ChainIDs[0]))
	if bytes.Equal(img, evil) {
		t.Errorf("the base layer still holds the other image's content")
	}
}

// PutLayer publishes nothing whose bytes do not hash to the chain ID
// offered (over the parent named), and private layers are never found by
// chain ID nor replaced through one.
func TestPutLayerVerifies(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tarBytes := tarOf(t, map[string]string{"f": "content"})
	diffID := digest.FromBytes(tarBytes)
	open := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tarBytes)), nil }
	parent := digest.FromString("parent")
	for _, tc := range []struct {
		name                  string
		chain, parent, diffID digest.Digest
	}{
		{"someone else's chain ID", digest.FromString("other"), "", ""},
		{"a base layer's chain ID over a parent", diffID, parent, ""},
		{"the right chain ID with a wrong diff ID", diffID, "", digest.FromString("x")},
	} {
		_, err := s.PutLayer(ctx, tc.chain, tc.parent, tc.diffID, open)
		if !errors.Is(err, store.ErrChainMismatch) {
			t.Errorf("%s: %v, want %v", tc.name, err, store.ErrChainMismatch)
		}
		if _, err := s.Layer(tc.chain); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: a layer was stored: %v", tc.name, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), "tmp")); len(ents) != 0 {
		t.Errorf("temp files left: %v", ents)
	}
	chain := store.ChainID(parent, diffID)
	if made, err := s.PutLayer(ctx, chain, parent, "", open); err != nil || !made {
		t.Fatalf("PutLayer with the right chain ID: %v, %v", made, err)
	}
	if !s.HasLayer(chain) {
		t.Errorf("verified layer not reported")
	}

	var reserved digest.Digest
	key, err := s.PutPrivateLayer(ctx, open, func(k digest.Digest) error { reserved = k; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if key != reserved || key == diffID || key == chain {
		t.Errorf("private key %s (reserved %s) is a chain ID of the content", key, reserved)
	}
	li, err := s.Layer(key)
	if err != nil || !li.Private || li.Verified {
		t.Errorf("private layer record %+v, %v", li, err)
	}
	if s.HasLayer(key) {
		t.Errorf("a private layer is shared")
	}
	if _, err := s.PutLayer(ctx, key, "", "", open); !errors.Is(err, store.ErrChainMismatch) {
		t.Errorf("PutLayer under a private key: %v, want %v", err, store.ErrChainMismatch)
	}
	if _, err := s.Layer(key); err != nil {
		t.Errorf("the private layer is gone: %v", err)
	}
}

func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, c := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(c))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(c)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
