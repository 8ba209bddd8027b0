package snapshotter

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/layervisor/layervisor/pkg/scratch"
)

// DefaultScratchPool is how many scratches New keeps ready.
const DefaultScratchPool = 2

// scratchPool keeps scratch disks cloned and mounted ahead of need, each
// in a directory of the snapshot layout (scratchFile mounted at
// scratchMount) under the snapshotter's root, named "pool-*". Prepare
// renames one into place: what is left of a container's rootfs-ready is
// the metadata and two directories, as for overlayfs. A directory holding
// a mount point renames with its mount. After a crash, reconcile removes
// pool directories like any directory without metadata.
type scratchPool struct {
	root      string // the snapshotter's
	storeRoot string // for the scratch template
	size      int
	ctx       context.Context // for the background fills; cancelled by close

	mu      sync.Mutex
	ready   []string
	filling bool
	closed  bool
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

func newScratchPool(root, storeRoot string, size int) *scratchPool {
	ctx, cancel := context.WithCancel(context.Background())
	return &scratchPool{root: root, storeRoot: storeRoot, size: size, ctx: ctx, cancel: cancel}
}

// take returns a ready directory ("" when there is none). The caller
// refills the pool (fill) once its Prepare is done: a refill running
// beside the Prepare would slow it down.
func (p *scratchPool) take() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	dir := ""
	if n := len(p.ready); n > 0 {
		dir = p.ready[n-1]
		p.ready = p.ready[:n-1]
	}
	return dir
}

// fill starts filling the pool in the background.
func (p *scratchPool) fill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fillLocked()
}

func (p *scratchPool) fillLocked() {
	if p.filling || p.closed || len(p.ready) >= p.size {
		return
	}
	p.filling = true
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		for {
			p.mu.Lock()
			if p.closed || len(p.ready) >= p.size {
				p.filling = false
				p.mu.Unlock()
				return
			}
			p.mu.Unlock()
			dir, err := p.make(p.ctx)
			p.mu.Lock()
			if err != nil || p.closed {
				p.filling = false
				p.mu.Unlock()
				if err != nil && !errors.Is(err, context.Canceled) {
					slog.Warn("snapshotter: prepare a scratch ahead", "err", err)
				}
				if dir != "" {
					discardPooled(dir)
				}
				return
			}
			p.ready = append(p.ready, dir)
			p.mu.Unlock()
		}
	}()
}

// make clones and mounts one scratch; on failure it leaves nothing.
func (p *scratchPool) make(ctx context.Context) (dir string, err error) {
	tmpl, err := scratch.EnsureTemplate(ctx, p.storeRoot, scratch.DefaultSize)
	if err != nil {
		return "", err
	}
	if dir, err = os.MkdirTemp(p.root, "pool-"); err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
			dir = ""
		}
	}()
	if err := scratch.Clone(ctx, tmpl, filepath.Join(dir, scratchFile)); err != nil {
		return dir, err
	}
	mnt := filepath.Join(dir, scratchMount)
	if err := mountImage(filepath.Join(dir, scratchFile), mnt, false); err != nil {
		return dir, err
	}
	// The overlay's directories too (create only adjusts the upper's owner).
	if err := os.Mkdir(filepath.Join(mnt, "upper"), 0o755); err != nil {
		return dir, errors.Join(err, discardPooled(dir))
	}
	if err := os.Mkdir(filepath.Join(mnt, "work"), 0o700); err != nil {
		return dir, errors.Join(err, discardPooled(dir))
	}
	return dir, nil
}

// close stops filling and removes the ready scratches.
func (p *scratchPool) close() error {
	p.mu.Lock()
	p.closed = true
	p.cancel()
	p.mu.Unlock()
	p.done.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, dir := range p.ready {
		errs = append(errs, discardPooled(dir))
	}
	p.ready = nil
	return errors.Join(errs...)
}

// discardPooled unmounts and removes a pool directory.
func discardPooled(dir string) error {
	if err := unmountLayer(filepath.Join(dir, scratchMount)); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}
