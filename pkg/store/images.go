package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/pkg/layerconv"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/ociimage"
)

// Image is an imported image.
type Image struct {
	Name           string          `json:"name"`
	ManifestDigest digest.Digest   `json:"manifestDigest"`
	ConfigDigest   digest.Digest   `json:"configDigest,omitempty"`
	Platform       string          `json:"platform,omitempty"`
	ChainIDs       []digest.Digest `json:"chainIDs"` // base layer first
	DiffIDs        []digest.Digest `json:"diffIDs"`
	// Config is what the image says about running it (Entrypoint, Cmd,
	// Env, WorkingDir, User…); images imported before it was kept have none.
	Config   *ocispec.ImageConfig `json:"config,omitempty"`
	Size     int64                `json:"size"` // sum of layer images
	Imported time.Time            `json:"imported"`
}

// TopFirst returns the chain IDs top-most layer first (hcsshim order).
func (im *Image) TopFirst() []digest.Digest {
	out := slices.Clone(im.ChainIDs)
	slices.Reverse(out)
	return out
}

// ImportOptions tune Import.
type ImportOptions struct {
	Name     string // image name; default: the name the archive gives
	Platform string // os/arch[/variant]; default linux/amd64 when ambiguous
	// Parallel bounds concurrent layer conversions (default: CPUs).
	Parallel int
	// Progress, when set, is called from several goroutines as work proceeds.
	Progress func(ImportProgress)
	// ForceUtilityVM prepares a Windows base layer's utility VM for CIM
	// boot even when its build (read from its SOFTWARE hive) is 20348 or
	// older, or unreadable.
	ForceUtilityVM bool
}

// ImportProgress reports one layer's progress.
type ImportProgress struct {
	Layer, Layers int
	ChainID       digest.Digest
	Bytes         int64  // uncompressed bytes read so far
	Total         int64  // compressed blob size (a lower bound for display)
	State         string // "converting", "exists", "done"
}

// ImportResult says what Import did.
type ImportResult struct {
	Image     Image `json:"image"`
	Converted int   `json:"converted"` // layers converted by this import
	Reused    int   `json:"reused"`    // layers already in the store
}

func (s *Store) imagePath(name string) string {
	sum := sha256.Sum256([]byte(name))
	return filepath.Join(s.root, "images", hex.EncodeToString(sum[:16])+".json")
}

// Import reads the image at path (OCI layout directory, OCI layout tar or
// docker-save tar), converts each layer not yet in the store, in parallel,
// and records the image. Layers already present are not converted again. On
// failure nothing this call created remains.
func (s *Store) Import(ctx context.Context, path string, opts ImportOptions) (res ImportResult, err error) {
	img, err := ociimage.Open(path, ociimage.Options{Platform: opts.Platform, Name: opts.Name})
	if err != nil {
		return res, err
	}
	defer img.Close()
	name := opts.Name
	if name == "" {
		if len(img.Names) > 0 {
			name = img.Names[0]
		} else {
			name = img.ManifestDigest.String()
		}
	}
	if IsWindows(img.Platform) { // CIM layers: see windows.go
		return s.importWindows(ctx, img, path, name, opts)
	}
	rec := Image{
		Name:           name,
		ManifestDigest: img.ManifestDigest,
		ConfigDigest:   img.ConfigDigest,
		Platform:       img.Platform,
		Imported:       time.Now().UTC(),
		Config:         &img.Config.Config,
	}
	for _, l := range img.Layers {
		rec.ChainIDs = append(rec.ChainIDs, l.ChainID)
		rec.DiffIDs = append(rec.DiffIDs, l.DiffID)
	}
	if existing, err := s.Image(name); err == nil {
		if existing.ManifestDigest != rec.ManifestDigest {
			return res, fmt.Errorf("image name %q is already taken by %s (importing %s from %s): %w",
				name, existing.ManifestDigest, rec.ManifestDigest, path, ErrExists)
		}
	}

	var created []digest.Digest
	var mu sync.Mutex
	defer func() {
		if err != nil {
			s.rollbackLayers(created)
		}
	}()
	// Another import may roll back a layer we found present; re-check under
	// the store lock before recording the image, and convert again if so.
	for attempt := 0; ; attempt++ {
		converted, reused, err := s.importLayers(ctx, img, path, opts, func(c digest.Digest) {
			mu.Lock()
			created = append(created, c)
			mu.Unlock()
		})
		if err != nil {
			return res, err
		}
		res.Converted += converted
		res.Reused = reused
		lk, err := s.lock()
		if err != nil {
			return res, err
		}
		missing := false
		var size int64
		for _, c := range rec.ChainIDs {
			st, err := os.Stat(filepath.Join(s.LayerDir(c), layers.LayerFile))
			if err != nil || !s.HasLayer(c) {
				missing = true
				break
			}
			size += st.Size()
		}
		if missing && attempt < 3 {
			lk.Release()
			continue
		}
		if missing {
			lk.Release()
			return res, fmt.Errorf("import %s: layers keep disappearing (concurrent gc?)", path)
		}
		rec.Size = size
		if existing, err := s.Image(name); err == nil && existing.ManifestDigest != rec.ManifestDigest {
			lk.Release()
			return res, fmt.Errorf("image name %q is already taken by %s: %w", name, existing.ManifestDigest, ErrExists)
		}
		err = atomicfile.WriteJSON(s.imagePath(name), rec, true)
		lk.Release()
		if err != nil {
			return res, err
		}
		res.Image = rec
		return res, nil
	}
}

// importLayers makes sure every layer of img is in the store.
func (s *Store) importLayers(ctx context.Context, img *ociimage.Image, path string, opts ImportOptions, onCreate func(digest.Digest)) (converted, reused int, err error) {
	par := opts.Parallel
	if par <= 0 {
		par = runtime.GOMAXPROCS(0)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(par)
	var nConv, nReuse atomic.Int32
	for i := range img.Layers {
		g.Go(func() error {
			made, err := s.ensureLayer(gctx, img, i, opts.Progress)
			if err != nil {
				return fmt.Errorf("import %s: layer %d (%s): %w", path, i+1, img.Layers[i].Name(), err)
			}
			if made {
				onCreate(img.Layers[i].ChainID)
				nConv.Add(1)
			} else {
				nReuse.Add(1)
			}
			return nil
		})
	}
	err = g.Wait()
	return int(nConv.Load()), int(nReuse.Load()), err
}

// ensureLayer converts layer i unless the store has it. It reports whether
// it converted. Concurrent callers for one chain ID (goroutines or
// processes) serialise on the layer's lock, so the work happens once.
func (s *Store) ensureLayer(ctx context.Context, img *ociimage.Image, i int, progress func(ImportProgress)) (bool, error) {
	l := img.Layers[i]
	report := func(state string, n int64) {
		if progress != nil {
			progress(ImportProgress{Layer: i + 1, Layers: len(img.Layers), ChainID: l.ChainID, Bytes: n, Total: l.Size, State: state})
		}
	}
	var read atomic.Int64
	open := func() (io.ReadCloser, error) {
		rc, err := img.OpenLayer(ctx, i)
		if err != nil {
			return nil, err
		}
		read.Store(0) // a layer read twice (two-pass conversion) counts once
		cr := &countingReader{r: rc, total: &read}
		if progress != nil {
			cr.report = func(n int64) { report("converting", n) }
		}
		return struct {
			io.Reader
			io.Closer
		}{cr, rc}, nil
	}
	var parent digest.Digest
	if i > 0 {
		parent = img.Layers[i-1].ChainID
	}
	made, err := s.putLayer(ctx, l.ChainID, parent, l.DiffID, open)
	switch {
	case err != nil:
		return made, err
	case made:
		report("done", read.Load())
	default:
		report("exists", 0)
	}
	return made, nil
}

// rollbackLayers removes layers an import created if no image, container
// or pinner refers to them.
func (s *Store) rollbackLayers(created []digest.Digest) {
	if len(created) == 0 {
		return
	}
	lk, err := s.lock()
	if err != nil {
		slog.Warn("rollback: cannot lock store", "err", err)
		return
	}
	defer lk.Release()
	used, err := s.usedLayers()
	if err != nil {
		slog.Warn("rollback: cannot read references", "err", err)
		return
	}
	// A snapshot may have taken a layer as soon as it was published.
	pinned, err := s.pinnedLayers()
	if err != nil {
		slog.Warn("rollback: cannot read references", "err", err)
		return
	}
	maps.Copy(used, pinned)
	for _, c := range created {
		if !used[c] {
			if err := os.RemoveAll(s.LayerDir(c)); err != nil {
				slog.Warn("rollback: remove layer", "chainID", c, "err", err)
			}
		}
	}
}

type countingReader struct {
	r      io.Reader
	total  *atomic.Int64 // bytes read, shared by the readers of one layer
	last   int64
	report func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	t := c.total.Add(int64(n))
	if c.report != nil && t-c.last >= 4<<20 {
		c.last = t
		c.report(t)
	}
	return n, err
}

// layerCurrent reports whether the layer is stored in the format this
// version of layervisor writes; other layers count as absent.
func (s *Store) layerCurrent(chainID digest.Digest) bool {
	var li LayerInfo
	if err := atomicfile.ReadJSON(filepath.Join(s.LayerDir(chainID), "layer.json"), &li); err != nil {
		return false
	}
	return li.Format == layerconv.FormatVersion
}

// removeStaleLayer removes a layer stored in another format or without
// verification (see PutLayer), so that it can be converted again; the
// caller holds the layer's lock. A layer a container uses stays: its
// mounts may be live.
func (s *Store) removeStaleLayer(chainID digest.Digest) error {
	dir := s.LayerDir(chainID)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	cs, err := s.Containers()
	if err != nil {
		return err
	}
	why := "in an old format"
	if _, current := s.currentLayer(chainID); current {
		why = "unverified (its diff ID was never computed from its content)"
	}
	for _, c := range cs {
		if slices.Contains(c.ChainIDs, chainID) {
			return fmt.Errorf("layer %s is stored %s and used by container %s: remove the container, then import again", chainID, why, c.Name)
		}
	}
	// Move it aside first so that the layer is gone atomically; gc removes
	// whatever a crash leaves under tmp/.
	trash, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "stale-"+chainID.Encoded()+"-")
	if err != nil {
		return err
	}
	if err := os.Rename(dir, filepath.Join(trash, "layer")); err != nil {
		os.Remove(trash)
		return fmt.Errorf("remove old-format layer %s: %w", chainID, err)
	}
	slog.Info("removed layer stored "+why, "chainID", chainID)
	return os.RemoveAll(trash)
}

// Image returns the record of the named image.
func (s *Store) Image(name string) (*Image, error) {
	var im Image
	if err := atomicfile.ReadJSON(s.imagePath(name), &im); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("image %q: %w", name, ErrNotFound)
		}
		return nil, err
	}
	return &im, nil
}

// Images lists every image, sorted by name.
func (s *Store) Images() ([]Image, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "images"))
	if err != nil {
		return nil, err
	}
	var out []Image
	for _, e := range ents {
		if isTemp(e.Name()) || filepath.Ext(e.Name()) != ".json" {
			continue
		}
		var im Image
		if err := atomicfile.ReadJSON(filepath.Join(s.root, "images", e.Name()), &im); err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	slices.SortFunc(out, func(a, b Image) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out, nil
}

// RemoveImage deletes an image record; it refuses while a container uses
// the image. Its layers go when gc finds them unreferenced.
func (s *Store) RemoveImage(ctx context.Context, name string) error {
	lk, err := s.lock()
	if err != nil {
		return err
	}
	defer lk.Release()
	if _, err := s.Image(name); err != nil {
		return err
	}
	cs, err := s.Containers()
	if err != nil {
		return err
	}
	var users []string
	for _, c := range cs {
		if c.Image == name {
			users = append(users, c.Name)
		}
	}
	if len(users) > 0 {
		return fmt.Errorf("image %q is used by container(s) %v: %w", name, users, ErrInUse)
	}
	return os.Remove(s.imagePath(name))
}

// usedLayers returns the chain IDs any image or container refers to.
func (s *Store) usedLayers() (map[digest.Digest]bool, error) {
	used := map[digest.Digest]bool{}
	ims, err := s.Images()
	if err != nil {
		return nil, err
	}
	for _, im := range ims {
		for _, c := range im.ChainIDs {
			used[c] = true
		}
	}
	cs, err := s.Containers()
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		for _, id := range c.ChainIDs {
			used[id] = true
		}
	}
	return used, nil
}

// Layers lists stored layers with the images and containers using them.
func (s *Store) Layers() ([]LayerInfo, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "layers"))
	if err != nil {
		return nil, err
	}
	ims, err := s.Images()
	if err != nil {
		return nil, err
	}
	cs, err := s.Containers()
	if err != nil {
		return nil, err
	}
	var out []LayerInfo
	for _, e := range ents {
		if !e.IsDir() || e.Name() == ".locks" {
			continue
		}
		var li LayerInfo
		if err := atomicfile.ReadJSON(filepath.Join(s.root, "layers", e.Name(), "layer.json"), &li); err != nil {
			return nil, err
		}
		for _, im := range ims {
			if slices.Contains(im.ChainIDs, li.ChainID) {
				li.Images = append(li.Images, im.Name)
			}
		}
		for _, c := range cs {
			if slices.Contains(c.ChainIDs, li.ChainID) {
				li.Container = append(li.Container, c.Name)
			}
		}
		out = append(out, li)
	}
	wls, err := s.windowsLayers()
	if err != nil {
		return nil, err
	}
	for _, w := range wls {
		li := w.LayerInfo
		li.Kind = "cim"
		for _, im := range ims {
			if slices.Contains(im.ChainIDs, li.ChainID) {
				li.Images = append(li.Images, im.Name)
			}
		}
		out = append(out, li)
	}
	return out, nil
}
