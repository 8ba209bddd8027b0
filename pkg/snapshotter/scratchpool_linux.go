package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/pkg/scratch"
)

// DefaultScratchPool is how many scratches New keeps ready.
const DefaultScratchPool = 2

// refillDelay is how long after a Prepare the pool waits to refill, while
// it still holds a scratch.
const refillDelay = 100 * time.Millisecond

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
	delay     time.Duration   // refillDelay but in tests
	ctx       context.Context // for the background fills; cancelled by close

	mu      sync.Mutex
	ready   []string
	filling bool
	hurry   chan struct{} // the pool ran dry: refill now
	closed  bool
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

func newScratchPool(root, storeRoot string, size int) *scratchPool {
	ctx, cancel := context.WithCancel(context.Background())
	return &scratchPool{root: root, storeRoot: storeRoot, size: size, delay: refillDelay, ctx: ctx, cancel: cancel, hurry: make(chan struct{}, 1)}
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
	if len(p.ready) == 0 {
		select { // a waiting refill waits no more
		case p.hurry <- struct{}{}:
		default:
		}
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
		lowerPriority()
		p.mu.Lock()
		select { // drop a signal from before this refill: a take that empties the pool from now on sends a new one (both under p.mu)
		case <-p.hurry:
		default:
		}
		wait, delay := len(p.ready) > 0, p.delay
		p.mu.Unlock()
		if wait {
			// Not while the Prepare that took a scratch still answers and
			// its caller mounts: on two cores the clone's copying doubled
			// that rootfs-ready. An empty pool cannot wait.
			select {
			case <-p.ctx.Done():
			case <-p.hurry:
			case <-time.After(delay):
			}
		}
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
					slog.WarnContext(p.ctx, "snapshotter: prepare a scratch ahead", "err", err)
				}
				if dir != "" {
					removeSnapshotDir(dir)
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
			err = errors.Join(err, removeSnapshotDir(dir))
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
		return dir, err
	}
	if err := os.Mkdir(filepath.Join(mnt, "work"), 0o700); err != nil {
		return dir, err
	}
	// Written out now, while nobody waits: otherwise ext4 (data=ordered)
	// writes the clone's blocks in the journal commit of the next fsync on
	// the file system, the metadata commit of some later Prepare
	// (measured: 19 ms instead of 9 ms per rootfs-ready).
	if err := syncScratch(mnt, filepath.Join(dir, scratchFile)); err != nil {
		return dir, err
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
		errs = append(errs, removeSnapshotDir(dir))
	}
	p.ready = nil
	return errors.Join(errs...)
}

// lowerPriority makes the calling goroutine's thread yield CPU and disk
// to everything else (nice 19, lowest best-effort I/O priority), for
// background work: the pool's refills, removed snapshots' teardowns. The
// thread is never unlocked, so it ends with the goroutine instead of
// carrying its priority to other goroutines.
func lowerPriority() {
	runtime.LockOSThread()
	const ioprioClassBE, ioprioWhoProcess = 2, 1
	if err := unix.Setpriority(unix.PRIO_PROCESS, 0, 19); err != nil {
		slog.Debug("snapshotter: lower a background thread's CPU priority", "err", err)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, 0, ioprioClassBE<<13|7); e != 0 {
		slog.Debug("snapshotter: lower a background thread's I/O priority", "err", e)
	}
}

// syncScratch writes out the mounted scratch's file system and then its
// image file (the loop device writes through the host's page cache).
func syncScratch(mnt, img string) error {
	for _, p := range []string{mnt, img} {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("sync scratch: %w", err)
		}
		if p == mnt {
			err = unix.Syncfs(int(f.Fd()))
		} else {
			err = unix.Fdatasync(int(f.Fd()))
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("sync scratch %s: %w", p, err)
		}
	}
	return nil
}
