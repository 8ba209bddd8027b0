// Package store is layervisor's on-disk state: read-only layers keyed by
// chain ID, image records, containers with their scratch, and the host
// mounts of containers' layers.
//
// Layout under the root:
//
//	layers/<chain-id-hex>/layer.vhd   read-only ext4 + VHD footer (content under layerconv.ContentDir)
//	layers/<chain-id-hex>/layer.json  what the layer is, and its image format (other formats count as absent)
//	layers/.locks/<hex>               per-layer import lock
//	images/<hash of name>.json        image records
//	containers/<name>/container.json  container records
//	containers/<name>/sandbox.img     scratch (or a symlink to a shared one;
//	                                  sandbox.vhdx for a VHDX scratch)
//	scratch/templates/                formatted scratch templates
//	mounts/                           host mounts of layers and scratches, and their state (package layers, Store.Host)
//	snapshots/                        the containerd snapshotter's (package snapshotter; its layers are pinned through a LayerPinner)
//	tmp/                              work in progress; gc removes leftovers
//
// Everything appears atomically (temp + rename). Metadata changes happen
// under the store lock; `GC` reconciles whatever a crash left.
package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/internal/flock"
)

// DefaultRoot is the default state directory.
const DefaultRoot = "/var/lib/layervisor"

// Errors callers may test with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInUse    = errors.New("in use")
)

// Store is an open state directory. Its methods are safe for concurrent use
// by goroutines and by several processes.
type Store struct {
	root string

	mu      sync.Mutex
	pinners map[string]LayerPinner // SetPinner
}

// Open opens (creating if needed) the state directory root and checks that
// it is writable.
func Open(root string) (*Store, error) {
	if root == "" {
		return nil, fmt.Errorf("store root is empty")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store root %q: %w", root, err)
	}
	s := &Store{root: abs}
	for _, d := range []string{"layers/.locks", "images", "containers", "tmp", "mounts"} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o700); err != nil {
			return nil, fmt.Errorf("store root %s: %w", abs, err)
		}
	}
	// A probe write catches read-only file systems up front, with a clear
	// error, instead of half way through an import.
	probe, err := os.CreateTemp(filepath.Join(abs, "tmp"), ".probe-*")
	if err != nil {
		return nil, fmt.Errorf("store root %s is not writable: %w", abs, err)
	}
	_, werr := probe.Write(make([]byte, 4096))
	probe.Close()
	os.Remove(probe.Name())
	if werr != nil {
		return nil, fmt.Errorf("store root %s is not writable: %w", abs, werr)
	}
	return s, nil
}

// Root returns the absolute state directory.
func (s *Store) Root() string { return s.root }

func (s *Store) lock() (*flock.Lock, error) {
	return flock.Acquire(filepath.Join(s.root, "store.lock"))
}

// LayerDir is the folder of the layer with the given chain ID.
func (s *Store) LayerDir(chainID digest.Digest) string {
	return filepath.Join(s.root, "layers", chainID.Encoded())
}

func (s *Store) layerLockPath(chainID digest.Digest) string {
	return filepath.Join(s.root, "layers", ".locks", chainID.Encoded())
}

var safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// ValidName checks a container name: it becomes a directory name.
func ValidName(name string) error {
	if !safeName.MatchString(name) {
		return fmt.Errorf("invalid container name %q: use 1-128 letters, digits, '_', '.', '-', starting with a letter or digit", name)
	}
	return nil
}

// LayerInfo describes a stored layer.
type LayerInfo struct {
	ChainID   digest.Digest `json:"chainID"`
	DiffID    digest.Digest `json:"diffID"`
	Format    int           `json:"format,omitempty"` // layerconv.FormatVersion it was written in
	Kind      string        `json:"kind,omitempty"`   // "cim" for a Windows layer (wclayers/), else an ext4 layer image
	Size      int64         `json:"size"`             // bytes on disk (layer.vhd)
	Entries   int           `json:"entries"`
	Created   time.Time     `json:"created"`
	Images    []string      `json:"images,omitempty"`     // images using it
	Container []string      `json:"containers,omitempty"` // containers using it

	// Verified: DiffID was computed from the bytes converted and ChainID
	// is ChainID(Parent, DiffID), so the layer may be shared by chain ID.
	// Layers of older versions, which did not record it, count as unverified.
	Verified bool `json:"verified,omitempty"`
	// Parent is the chain ID below, as the verification used it ("" for a base layer).
	Parent digest.Digest `json:"parent,omitempty"`
	// Private: content a snapshot client wrote, kept under a random key
	// (no chain ID) that only its snapshot knows.
	Private bool `json:"private,omitempty"`
}

func isTemp(name string) bool { return strings.HasPrefix(name, ".tmp-") }
