package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/logctx"
	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/pkg/layerconv"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/loop"
	"github.com/layervisor/layervisor/pkg/scratch"
	"github.com/layervisor/layervisor/pkg/store"
)

// Snapshotter is layervisor's containerd snapshotter over one store.
type Snapshotter struct {
	store *store.Store
	root  string // <store>/snapshots
	ms    *storage.MetaStore

	// host owns the layer mounts, shared with the store's containers:
	// the snapshotter holds (layers.Host.Hold) each layer some committed
	// snapshot uses, as one holder, counting its snapshots itself.
	host *layers.Host

	mu         sync.Mutex
	refs       map[digest.Digest]int    // layer -> committed snapshots using its mount
	mountAt    map[digest.Digest]string // layer -> its mount point, while refs > 0
	holding    bool                     // reconcile took over the holds: Close releases them
	scratches  map[string]bool          // snapshot IDs whose scratch is mounted
	chains     map[string]digest.Digest // snapshot ID -> chain ID, as its reference file says
	teardowns  sync.WaitGroup           // discard's
	teardownMu sync.Mutex
	noScratch  bool
	poolSize   int
	pool       *scratchPool // nil without scratches
	closed     bool
}

var _ snapshots.Snapshotter = (*Snapshotter)(nil)

// Option tunes New.
type Option func(*Snapshotter)

// WithoutScratch makes containers' writable layers plain directories
// instead of scratch disks: faster to prepare, but without a size bound
// and nothing a VM runtime can attach.
func WithoutScratch() Option { return func(s *Snapshotter) { s.noScratch = true } }

// WithScratchPool keeps n scratches cloned and mounted ahead of need
// (default DefaultScratchPool; 0 prepares each when asked).
func WithScratchPool(n int) Option { return func(s *Snapshotter) { s.poolSize = n } }

// New opens the snapshotter of the store, reconciling what a crash left.
func New(ctx context.Context, st *store.Store, opts ...Option) (*Snapshotter, error) {
	root := filepath.Join(st.Root(), snapshotsDir)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter root %s: %w", root, err)
	}
	// Before anything can run gc: the snapshots' layers are in use.
	RegisterPinner(st)
	// A second daemon on the same root must fail, not wait for the lock.
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"), func(o *bolt.Options) error {
		o.Timeout = 2 * time.Second
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot metadata in %s: %w", root, err)
	}
	s := &Snapshotter{store: st, root: root, ms: ms, host: st.Host(), refs: map[digest.Digest]int{}, mountAt: map[digest.Digest]string{}, scratches: map[string]bool{}, chains: map[string]digest.Digest{}, poolSize: DefaultScratchPool}
	for _, o := range opts {
		o(s)
	}
	if !s.noScratch && s.poolSize > 0 {
		s.pool = newScratchPool(root, st.Root(), s.poolSize)
	}
	if err := s.reconcile(ctx); err != nil {
		s.Close()
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("snapshots in %s are in use by another layervisor serve: %w", root, err)
		}
		return nil, fmt.Errorf("reconcile snapshots in %s: %w", root, err)
	}
	if s.pool != nil {
		s.pool.fill()
	}
	return s, nil
}

func (s *Snapshotter) dir(id string) string { return filepath.Join(s.root, id) }

// holderName is the snapshotter's name among the users of layer mounts
// (layers.Host): one per store, as one snapshotter serves a root.
const holderName = "snapshotter"

// legacyMounts, under the snapshotter's root, is where versions before
// layers.Host owned every layer mount mounted the snapshots' layers; the
// reconcile at start adopts what is still mounted there and in use.
const legacyMounts = "l"

// layerMount is where a layer some committed snapshot uses is mounted (by
// layers.Host, shared with the store's containers, in one directory with
// short names so that containerd can fit 128 lowers in an overlay's
// options).
func (s *Snapshotter) layerMount(chain digest.Digest) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mp, ok := s.mountAt[chain]
	if !ok {
		return "", fmt.Errorf("layer %s is not mounted", chain)
	}
	return mp, nil
}

func (s *Snapshotter) lowerDir(chain digest.Digest) (string, error) {
	mp, err := s.layerMount(chain)
	if err != nil {
		return "", err
	}
	return layerconv.LowerDir(mp), nil
}

// chainOf is the chain ID of committed snapshot id, read from its
// reference file once (a Prepare on an image of n layers asks n times).
func (s *Snapshotter) chainOf(id string) (digest.Digest, error) {
	s.mu.Lock()
	d, ok := s.chains[id]
	s.mu.Unlock()
	if ok {
		return d, nil
	}
	b, err := os.ReadFile(filepath.Join(s.dir(id), refFile))
	if err != nil {
		return "", fmt.Errorf("snapshot %s has no layer: %w", id, err)
	}
	d, err = digest.Parse(strings.TrimSpace(string(b)))
	if err != nil {
		return "", fmt.Errorf("snapshot %s layer reference: %w", id, err)
	}
	s.mu.Lock()
	s.chains[id] = d
	s.mu.Unlock()
	return d, nil
}

// removeRef removes snapshot id's layer reference.
func (s *Snapshotter) removeRef(id string) error {
	s.mu.Lock()
	delete(s.chains, id)
	s.mu.Unlock()
	if err := os.Remove(filepath.Join(s.dir(id), refFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove snapshot %s's layer reference: %w", id, err)
	}
	return nil
}

func (s *Snapshotter) writeRef(id string, chain digest.Digest) error {
	p, ref := filepath.Join(s.dir(id), refFile), chain.String()+"\n"
	// The differ writes the reference before converting, and again with
	// the applied marker, and Commit once more: the file only ever appears
	// durably (fsync, rename, directory fsync), so an equal one is kept as
	// is, which spares two fsyncs each time.
	if b, err := os.ReadFile(p); err == nil && string(b) == ref {
		return nil
	}
	s.mu.Lock()
	delete(s.chains, id)
	s.mu.Unlock()
	return atomicfile.Write(p, []byte(ref), 0o600, true)
}

// acquire takes a reference on the layer's shared mount: the first one
// holds it in the host's layer mounts, which mount it unless a container
// (or a snapshot before a restart) has it mounted already.
func (s *Snapshotter) acquire(ctx context.Context, chain digest.Digest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs[chain] == 0 {
		mp, err := s.host.Hold(ctx, holderName, s.store.LayerImage(chain))
		if err != nil {
			return fmt.Errorf("layer %s: %w", chain, err)
		}
		s.mountAt[chain] = mp
	}
	s.refs[chain]++
	return nil
}

// release drops a reference; the last one releases the hold, which
// unmounts the layer unless a container uses it.
func (s *Snapshotter) release(ctx context.Context, chain digest.Digest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs[chain] == 0 {
		return nil
	}
	s.refs[chain]--
	if s.refs[chain] > 0 {
		return nil
	}
	delete(s.refs, chain)
	delete(s.mountAt, chain)
	return s.host.Release(ctx, holderName, s.store.LayerImage(chain))
}

// logCtx is ctx with what identifies the call in the log (package
// logctx): the caller's containerd namespace, then attrs.
func logCtx(ctx context.Context, attrs ...slog.Attr) context.Context {
	if ns, ok := namespaces.Namespace(ctx); ok {
		attrs = append([]slog.Attr{slog.String("namespace", ns)}, attrs...)
	}
	return logctx.With(ctx, attrs...)
}

// keyParent are the log attributes of a snapshot key and its parent.
func keyParent(key, parent string) []slog.Attr {
	if parent == "" {
		return []slog.Attr{slog.String("key", key)}
	}
	return []slog.Attr{slog.String("key", key), slog.String("parent", parent)}
}

// Stat returns the info of a snapshot.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	ctx = logCtx(ctx, slog.String("key", key))
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update changes a snapshot's labels.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (out snapshots.Info, err error) {
	ctx = logCtx(ctx, slog.String("key", info.Name))
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		out, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	return out, err
}

// Usage is the layer image's size for a committed snapshot and the disk
// usage of the upper directory otherwise.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	ctx = logCtx(ctx, slog.String("key", key))
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return usage, err
	}
	if info.Kind == snapshots.KindActive {
		upper, _ := s.upperWork(id)
		return diskUsage(upper)
	}
	return usage, nil
}

// Mounts returns the mounts of an active snapshot or view.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	ctx = logCtx(ctx, slog.String("key", key))
	var sn storage.Snapshot
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		sn, err = storage.GetSnapshot(ctx, key)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", key, err)
	}
	return s.mounts(sn)
}

// Prepare creates an active snapshot. When containerd names the layer it is
// about to unpack (label containerd.io/snapshot.ref) and the store holds
// it, the layer becomes a committed snapshot at once and Prepare answers
// "already exists", so containerd skips fetching and unpacking it.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	ctx = logCtx(ctx, keyParent(key, parent)...)
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	// In a parallel unpack the parent comes only at Commit (rebase):
	// adopting the layer now would record it without its parent.
	rebase := parent == "" && base.Labels["containerd.io/snapshot/parent-chain-id"] != ""
	if target := base.Labels[snapshots.LabelSnapshotRef]; target != "" && !rebase {
		if chain, err := digest.Parse(target); err == nil && s.store.HasLayer(chain) {
			if err := s.adopt(ctx, key, parent, chain, opts); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("layer %s is in the store: %w", chain, errdefs.ErrAlreadyExists)
		}
	}
	return s.create(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	ctx = logCtx(ctx, keyParent(key, parent)...)
	return s.create(ctx, snapshots.KindView, key, parent, opts)
}

func (s *Snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) ([]mount.Mount, error) {
	// A container's writable layer is a scratch disk cloned from the
	// store's template; what containerd unpacks into (and views) stays a
	// directory, converted to a layer image at Commit.
	withScratch := kind == snapshots.KindActive && !isUnpackKey(key) && !s.noScratch
	var tmp string
	if withScratch && s.pool != nil {
		defer s.pool.fill()
		tmp = s.pool.take() // a ready scratch, mounted
	}
	pooled := tmp != ""
	if !pooled {
		var err error
		if tmp, err = os.MkdirTemp(s.root, "new-"); err != nil {
			return nil, err
		}
	}
	defer removeSnapshotDir(tmp) // unless renamed into place: then a no-op
	if !pooled && withScratch {
		tmpl, err := scratch.EnsureTemplate(ctx, s.store.Root(), scratch.DefaultSize)
		if err != nil {
			return nil, err
		}
		if err := scratch.Clone(ctx, tmpl, filepath.Join(tmp, scratchFile)); err != nil {
			return nil, err
		}
	} else if !pooled {
		if err := os.Mkdir(filepath.Join(tmp, "fs"), 0o755); err != nil {
			return nil, err
		}
	}
	var sn storage.Snapshot
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		sn, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return err
		}
		if err := os.Rename(tmp, s.dir(sn.ID)); err != nil {
			return err
		}
		if pooled {
			s.mu.Lock()
			s.scratches[sn.ID] = true
			s.mu.Unlock()
		} else if withScratch {
			if err := s.mountScratch(sn.ID); err != nil {
				return err
			}
		}
		upper, work := s.upperWork(sn.ID)
		// The root of a new snapshot is 0755 whatever the umask, as
		// containerd's own snapshotters make it.
		if err := os.MkdirAll(upper, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(upper, 0o755); err != nil {
			return err
		}
		if kind == snapshots.KindActive {
			if err := os.MkdirAll(work, 0o700); err != nil {
				return err
			}
		}
		if len(sn.ParentIDs) > 0 {
			// The upper root takes the owner of the parent's root, so that
			// the merged root keeps it.
			chain, err := s.chainOf(sn.ParentIDs[0])
			if err != nil {
				return err
			}
			lower, err := s.lowerDir(chain)
			if err != nil {
				return fmt.Errorf("parent layer: %w", err)
			}
			var st unix.Stat_t
			if err := unix.Stat(lower, &st); err != nil {
				return fmt.Errorf("parent layer %s: %w", chain, err)
			}
			if err := os.Lchown(upper, int(st.Uid), int(st.Gid)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if sn.ID != "" {
			// Renamed (and maybe mounted), then the transaction failed.
			s.unmountScratch(sn.ID)
			os.RemoveAll(s.dir(sn.ID))
		}
		return nil, err
	}
	slog.DebugContext(ctx, "created snapshot", "kind", kind, "scratch", withScratch, "pooled", pooled)
	return s.mounts(sn)
}

// scratchFile, in a snapshot's directory, is its scratch disk, mounted at
// scratchMount; the upper and work directories are inside it.
const (
	scratchFile  = "sandbox.img"
	scratchMount = "mnt"
)

// isUnpackKey reports whether containerd made the key to unpack a layer
// ("[<namespace>/<n>/]extract-<random> <chain ID>").
func isUnpackKey(key string) bool {
	return strings.HasPrefix(key[strings.LastIndex(key, "/")+1:], "extract-")
}

func (s *Snapshotter) hasScratch(id string) bool {
	_, err := os.Stat(filepath.Join(s.dir(id), scratchFile))
	return err == nil
}

// upperWork returns the upper and work directories of snapshot id.
func (s *Snapshotter) upperWork(id string) (upper, work string) {
	if s.hasScratch(id) {
		mnt := filepath.Join(s.dir(id), scratchMount)
		return filepath.Join(mnt, "upper"), filepath.Join(mnt, "work")
	}
	return filepath.Join(s.dir(id), "fs"), filepath.Join(s.dir(id), "work")
}

// mountScratch mounts the scratch of snapshot id (read-write).
func (s *Snapshotter) mountScratch(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.scratches[id] {
		return nil
	}
	if err := mountImage(filepath.Join(s.dir(id), scratchFile), filepath.Join(s.dir(id), scratchMount), false); err != nil {
		return err
	}
	s.scratches[id] = true
	return nil
}

func (s *Snapshotter) unmountScratch(id string) error {
	s.mu.Lock()
	delete(s.scratches, id)
	s.mu.Unlock()
	return layers.UnmountAndRemove(filepath.Join(s.dir(id), scratchMount))
}

// removeSnapshotDir unmounts the scratch a snapshot directory may hold (a
// no-op when none is mounted) and deletes the directory: a removed
// snapshot's, a pool's, one a crash left.
func removeSnapshotDir(dir string) error {
	if err := layers.UnmountAndRemove(filepath.Join(dir, scratchMount)); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// discard takes a removed snapshot's directory out of the way (renamed to
// trash-<id>, its scratch mount with it) and tears it down in the
// background: unmounting a scratch and deleting its image took 13-30 ms,
// which containerd 1.6 waits for, holding up the next Prepare. A crash
// leaves a trash directory, which reconcile removes like any directory
// without metadata; Close waits for the teardowns.
func (s *Snapshotter) discard(ctx context.Context, id string) error {
	// The layer reference goes now: gc must not see it in the trash.
	if err := s.removeRef(id); err != nil {
		return err
	}
	trash := filepath.Join(s.root, "trash-"+id)
	if err := os.Rename(s.dir(id), trash); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove snapshot directory: %w", err)
	}
	s.mu.Lock()
	delete(s.scratches, id)
	background := !s.closed
	if background {
		s.teardowns.Add(1) // under mu, so that Close, once closed, waits for it
	}
	s.mu.Unlock()
	teardown := func() error {
		s.teardownMu.Lock() // one at a time
		defer s.teardownMu.Unlock()
		return removeSnapshotDir(trash)
	}
	if !background {
		return teardown()
	}
	ctx = context.WithoutCancel(ctx) // for the log: the teardown outlives the call
	go func() {
		defer s.teardowns.Done()
		lowerPriority()
		if err := teardown(); err != nil {
			slog.WarnContext(ctx, "snapshotter: tear down a removed snapshot (reconcile retries)", "dir", trash, "err", err)
		}
	}()
	return nil
}

// adopt records a stored layer as a committed snapshot named key.
func (s *Snapshotter) adopt(ctx context.Context, key, parent string, chain digest.Digest, opts []snapshots.Opt) error {
	tmpKey := "adopt/" + key
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		sn, err := storage.CreateSnapshot(ctx, snapshots.KindActive, tmpKey, parent, opts...)
		if err != nil {
			return err
		}
		if err := os.Mkdir(s.dir(sn.ID), 0o700); err != nil {
			return err
		}
		if err := s.writeRef(sn.ID, chain); err != nil {
			os.RemoveAll(s.dir(sn.ID))
			return err
		}
		if err := s.acquire(ctx, chain); err != nil {
			os.RemoveAll(s.dir(sn.ID))
			return err
		}
		if _, err := storage.CommitActive(ctx, tmpKey, key, layerUsage(s.store.LayerImage(chain)), opts...); err != nil {
			s.release(ctx, chain)
			os.RemoveAll(s.dir(sn.ID))
			return err
		}
		slog.DebugContext(ctx, "snapshot from stored layer", "chainID", chain)
		return nil
	})
}

func (s *Snapshotter) mounts(sn storage.Snapshot) ([]mount.Mount, error) {
	upper, work := s.upperWork(sn.ID)
	rw := "rw"
	if sn.Kind == snapshots.KindView {
		rw = "ro"
	}
	if len(sn.ParentIDs) == 0 {
		return []mount.Mount{{Type: "bind", Source: upper, Options: []string{rw, "rbind"}}}, nil
	}
	lowers := make([]string, len(sn.ParentIDs))
	for i, pid := range sn.ParentIDs {
		chain, err := s.chainOf(pid)
		if err != nil {
			return nil, err
		}
		if lowers[i], err = s.lowerDir(chain); err != nil {
			return nil, err
		}
	}
	if sn.Kind == snapshots.KindView {
		if len(lowers) == 1 {
			return []mount.Mount{{Type: "bind", Source: lowers[0], Options: []string{"ro", "rbind"}}}, nil
		}
		// An overlay without an upper directory is read-only.
		return []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + strings.Join(lowers, ":")}}}, nil
	}
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{
		"workdir=" + work,
		"upperdir=" + upper,
		"lowerdir=" + strings.Join(lowers, ":"),
		// Renaming a directory of a lower layer works (instead of EXDEV);
		// Commit folds the redirected directory into the new layer.
		"redirect_dir=on",
	}}}, nil
}

// Commit turns an active snapshot into a layer image of the store and
// records it as committed snapshot name. The layer's chain ID is the one
// containerd names (the last element of name, or the snapshot.ref label)
// when it names one, else computed from the content.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	ctx = logCtx(ctx, slog.String("name", name), slog.String("key", key))
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return err
		}
	}
	var sn storage.Snapshot
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		sn, err = storage.GetSnapshot(ctx, key)
		return err
	})
	if err != nil {
		return fmt.Errorf("commit %q: %w", key, err)
	}
	if sn.Kind != snapshots.KindActive {
		return fmt.Errorf("commit %q: not an active snapshot: %w", key, errdefs.ErrFailedPrecondition)
	}
	var parentChain digest.Digest
	var lowers []string
	for i, pid := range sn.ParentIDs {
		chain, err := s.chainOf(pid)
		if err != nil {
			return err
		}
		if i == 0 {
			parentChain = chain
		}
		lower, err := s.lowerDir(chain)
		if err != nil {
			return fmt.Errorf("commit %q: %w", key, err)
		}
		lowers = append(lowers, lower)
	}
	upper, _ := s.upperWork(sn.ID)
	open := func() (io.ReadCloser, error) { return tarUpper(ctx, upper, lowers), nil }

	chain, converted, private, err := s.commitLayer(ctx, sn, name, base, parentChain, open)
	if err != nil {
		return fmt.Errorf("commit %q: %w", key, err)
	}
	if err := s.acquire(ctx, chain); err != nil {
		s.removeRef(sn.ID)
		return fmt.Errorf("commit %q: %w", key, err)
	}
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, err := storage.CommitActive(ctx, key, name, layerUsage(s.store.LayerImage(chain)), opts...)
		return err
	})
	if err != nil {
		s.release(ctx, chain)
		s.removeRef(sn.ID)
		return err
	}
	// The content lives in the layer image now.
	leftovers := []string{"fs", "work", appliedFile}
	if s.hasScratch(sn.ID) {
		if err := s.unmountScratch(sn.ID); err != nil {
			// Kept for the next start's reconcile to unmount.
			slog.WarnContext(ctx, "unmount committed snapshot's scratch", "id", sn.ID, "err", err)
		} else {
			leftovers = append(leftovers, scratchMount, scratchFile)
		}
	}
	for _, sub := range leftovers {
		if err := os.RemoveAll(filepath.Join(s.dir(sn.ID), sub)); err != nil {
			slog.WarnContext(ctx, "remove committed snapshot's upper", "id", sn.ID, "err", err)
		}
	}
	slog.DebugContext(ctx, "committed snapshot", "chainID", chain, "converted", converted, "private", private)
	return nil
}

// commitLayer makes sure the store holds the layer of active snapshot sn
// being committed as name, and records it as the snapshot's reference (on
// error, none is left). It returns the layer's key in the store.
//
// Content is shared between snapshots (and so between containerd
// namespaces, and with `image import`) only under a chain ID that was
// verified, because anyone who can reach containerd may prepare a
// snapshot, write anything into it and commit it under the chain ID of a
// real image's layer: containerd's unpacker names the committed snapshot
// after the chain ID, and the backend sees that name. So:
//
//   - the differ wrote the layer: it verified the chain ID from the blob's
//     bytes (Differ.Apply);
//   - a name that is a chain ID the store has verified: that layer, not
//     the directory. It is what the unpacker that made the directory
//     meant (containerd checks the diff ID of what it extracts against
//     the image), and a client that wrote something else gets the real
//     layer, never the other way round;
//   - any other name that is a chain ID: a private layer under a random
//     key, which only this snapshot refers to. Verifying the name would
//     take the diff ID of the original tar, and a directory cannot give it
//     back: the walking differ's extraction does not keep the tar's bytes
//     (entry order, headers, padding, mtimes of what it creates), so
//     re-tarring it almost never hashes to the image's diff ID;
//   - a name that is no chain ID: the layer is named after its content,
//     ChainID(parent, digest of the tar made here), which is verified by
//     construction and so shareable (two passes: hash, then convert).
func (s *Snapshotter) commitLayer(ctx context.Context, sn storage.Snapshot, name string, base snapshots.Info, parentChain digest.Digest, open layerconv.Opener) (chain digest.Digest, converted, private bool, err error) {
	named := namedChain(name, base.Labels)
	if b, err := os.ReadFile(filepath.Join(s.dir(sn.ID), appliedFile)); err == nil {
		applied, err := digest.Parse(strings.TrimSpace(string(b)))
		if err != nil {
			return "", false, false, fmt.Errorf("applied layer: %w", err)
		}
		if named != "" && named != applied {
			return "", false, false, fmt.Errorf("named %s, but the differ applied layer %s: %w", named, applied, errdefs.ErrInvalidArgument)
		}
		// The reference first, so that gc never removes the layer in between.
		if err := s.writeRef(sn.ID, applied); err != nil {
			return "", false, false, err
		}
		if !s.store.HasLayer(applied) {
			s.removeRef(sn.ID)
			return "", false, false, fmt.Errorf("the differ's layer %s is not in the store", applied)
		}
		return applied, false, false, nil
	}
	if base.Parent != "" && len(sn.ParentIDs) == 0 {
		// A rebase (parallel unpack): whiteouts written without the lower
		// layers in place were dropped, so only the differ's layer is right.
		return "", false, false, fmt.Errorf("onto %q: rebase needs the layervisor differ to unpack: %w", base.Parent, errdefs.ErrNotImplemented)
	}
	if named != "" {
		if err := s.writeRef(sn.ID, named); err != nil {
			return "", false, false, err
		}
		if s.store.HasLayer(named) { // checked after the reference: gc keeps it now
			return named, false, false, nil
		}
		// The private key's reference replaces the name's before the layer
		// exists, so that gc keeps it from the start.
		key, err := s.store.PutPrivateLayer(ctx, open, func(key digest.Digest) error { return s.writeRef(sn.ID, key) })
		if err != nil {
			s.removeRef(sn.ID)
			return "", false, false, err
		}
		slog.DebugContext(ctx, "snapshot kept private: its name claims a chain ID nobody verified", "claimed", named, "privateLayer", key)
		return key, true, true, nil
	}
	diffID, err := digestOf(open)
	if err != nil {
		return "", false, false, err
	}
	chain = store.ChainID(parentChain, diffID)
	if err := s.writeRef(sn.ID, chain); err != nil {
		return "", false, false, err
	}
	converted, err = s.store.PutLayer(ctx, chain, parentChain, diffID, open)
	if err != nil {
		s.removeRef(sn.ID)
		return "", false, false, err
	}
	return chain, converted, false, nil
}

// namedChain is the chain ID containerd gives a snapshot, if any: unpacking
// commits "<namespace>/<n>/<chain ID>", and sets snapshot.ref in 2.x.
func namedChain(name string, labels map[string]string) digest.Digest {
	if d, err := digest.Parse(name[strings.LastIndex(name, "/")+1:]); err == nil && d.Algorithm() == digest.SHA256 {
		return d
	}
	if d, err := digest.Parse(labels[snapshots.LabelSnapshotRef]); err == nil && d.Algorithm() == digest.SHA256 {
		return d
	}
	return ""
}

func digestOf(open func() (io.ReadCloser, error)) (digest.Digest, error) {
	rc, err := open()
	if err != nil {
		return "", err
	}
	defer rc.Close()
	return digest.FromReader(rc)
}

// Remove deletes a snapshot; a committed one with children is refused.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	ctx = logCtx(ctx, slog.String("key", key))
	var (
		id   string
		kind snapshots.Kind
	)
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		id, kind, err = storage.Remove(ctx, key)
		return err
	})
	if err != nil {
		return fmt.Errorf("remove snapshot %q: %w", key, err)
	}
	var errs []error
	if kind == snapshots.KindCommitted {
		if chain, err := s.chainOf(id); err != nil {
			errs = append(errs, err)
		} else if err := s.release(ctx, chain); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.discard(ctx, id); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Walk calls fn for every snapshot matching the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, fs ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, fs...)
	})
}

// Close releases the layers (unmounted unless a container of the store uses
// them) and closes the metadata. Overlays in use keep their own references
// to the layers, so running containers are unaffected.
func (s *Snapshotter) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.teardowns.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	if s.pool != nil {
		errs = append(errs, s.pool.close())
	}
	for id := range s.scratches {
		if err := layers.UnmountAndRemove(filepath.Join(s.dir(id), scratchMount)); err != nil {
			errs = append(errs, err)
		}
		delete(s.scratches, id)
	}
	// Only once reconcile took the holds over: a snapshotter that failed
	// to start beside a running one must not release that one's holds.
	if s.holding {
		if _, err := s.host.SetHeld(context.Background(), holderName, nil, ""); err != nil {
			errs = append(errs, err)
		}
		s.holding = false
	}
	clear(s.refs)
	clear(s.mountAt)
	if err := s.ms.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// adoptScratchMount records the scratch of active snapshot id as mounted,
// mounting it if a reboot took the mount away.
func (s *Snapshotter) adoptScratchMount(id string) error {
	mounted, err := mountinfo.Mountpoints()
	if err != nil {
		return err
	}
	if mounted[filepath.Join(s.dir(id), scratchMount)] {
		s.mu.Lock()
		s.scratches[id] = true
		s.mu.Unlock()
		return nil
	}
	return s.mountScratch(id)
}

// reconcile repairs what a crash left, then runs the store's gc.
func (s *Snapshotter) reconcile(ctx context.Context) error {
	var ids map[string]string // id -> key
	var committed []string
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		ids, err = storage.IDMap(ctx)
		if errdefs.IsNotFound(err) {
			return nil // a new store: no bucket yet
		}
		if err != nil {
			return err
		}
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Kind == snapshots.KindCommitted {
				committed = append(committed, info.Name)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	isCommitted := map[string]bool{}
	for _, k := range committed {
		isCommitted[k] = true
	}
	var errs []error
	want := map[digest.Digest]int{}
	users := map[digest.Digest][]string{}
	ents, err := os.ReadDir(s.root)
	if err != nil {
		return err
	}
	for _, e := range ents {
		n := e.Name()
		if !e.IsDir() || n == legacyMounts {
			continue
		}
		key, known := ids[n]
		if _, nerr := strconv.ParseUint(n, 10, 64); nerr != nil || !known {
			slog.InfoContext(ctx, "removing snapshot directory without metadata", "dir", s.dir(n))
			if err := removeSnapshotDir(s.dir(n)); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if !isCommitted[key] {
			// A commit that died midway: the snapshot is still active.
			s.removeRef(n)
			if s.hasScratch(n) {
				if err := s.adoptScratchMount(n); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		// A committed snapshot's scratch whose unmount failed, or that a
		// crash left mounted after the commit.
		if s.hasScratch(n) {
			if err := layers.UnmountAndRemove(filepath.Join(s.dir(n), scratchMount)); err != nil {
				errs = append(errs, err)
			} else {
				os.Remove(filepath.Join(s.dir(n), scratchFile))
			}
		}
		chain, err := s.chainOf(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		want[chain]++
		users[chain] = append(users[chain], n)
	}
	// Snapshots an older layervisor committed under a chain ID without
	// verifying it keep their content as a private layer; the chain ID is
	// then free for verified content, which must not find the old content
	// still mounted under it.
	for chain, ids := range users {
		li, err := s.store.Layer(chain)
		if err != nil || li.Verified || li.Private {
			continue
		}
		key, err := s.store.PrivatizeLayer(chain, func(key digest.Digest) error {
			var errs []error
			for _, id := range ids {
				errs = append(errs, s.writeRef(id, key))
			}
			return errors.Join(errs...)
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("make unverified layer %s private: %w", chain, err))
		}
		if key != "" {
			want[key] += want[chain]
			delete(want, chain)
		}
	}
	if err := s.reconcileLayerMounts(ctx, want); err != nil {
		errs = append(errs, err)
	}
	if _, err := s.store.GC(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// reconcileLayerMounts holds exactly the wanted layers in the host's
// layer mounts, each once, whatever a previous run held: want counts the
// committed snapshots of each layer. What is mounted already (by a previous
// run, a container) stays; a layer still mounted in l/ by a version before
// layers.Host owned every layer mount is adopted there rather than mounted
// a second time, and the rest of l/ is unmounted.
func (s *Snapshotter) reconcileLayerMounts(ctx context.Context, want map[digest.Digest]int) error {
	// In a fixed order, so that which of two images sharing a name prefix
	// gets the short name does not depend on map order.
	wanted := slices.Sorted(maps.Keys(want))
	images := make([]string, len(wanted))
	for i, chain := range wanted {
		images[i] = s.store.LayerImage(chain)
	}
	legacy := filepath.Join(s.root, legacyMounts)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holding = true
	mps, err := s.host.SetHeld(ctx, holderName, images, legacy)
	for i, chain := range wanted {
		if i >= len(mps) || mps[i] == "" {
			continue // in err
		}
		s.mountAt[chain] = mps[i]
		s.refs[chain] = want[chain]
	}
	os.Remove(legacy) // once nothing is mounted there
	return err
}

// mountImage loop-attaches an ext4 image and mounts it at mp, as the host
// path does.
func mountImage(image, mp string, readOnly bool) error {
	if err := layers.MountImage(image, mp, readOnly); err != nil {
		return fmt.Errorf("mount %s at %s: %w", image, mp, err)
	}
	return nil
}

func layerUsage(image string) snapshots.Usage {
	var st unix.Stat_t
	if err := unix.Stat(image, &st); err != nil {
		return snapshots.Usage{}
	}
	return snapshots.Usage{Inodes: 1, Size: st.Blocks * 512}
}

// diskUsage counts the inodes and allocated bytes under dir.
func diskUsage(dir string) (snapshots.Usage, error) {
	var u snapshots.Usage
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || seen[st.Ino] {
			return nil
		}
		seen[st.Ino] = true
		u.Inodes++
		u.Size += st.Blocks * 512
		return nil
	})
	if err != nil {
		return u, fmt.Errorf("usage of %s: %w", dir, err)
	}
	return u, nil
}

// LayerImages maps the overlay (or bind) mount of a snapshot back to the
// layer images behind its lower directories, top-most first, through the
// loop devices that hold them: a VM runtime attaches those files instead of
// mounting on the host. The upper directory (the container's writes) is
// not included.
func LayerImages(m mount.Mount) ([]string, error) {
	var lowers []string
	switch m.Type {
	case "overlay":
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				lowers = strings.Split(v, ":")
			}
		}
	case "bind":
		lowers = []string{m.Source}
	default:
		return nil, fmt.Errorf("mount type %q: not a layervisor snapshot mount", m.Type)
	}
	ms, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	source := map[string]string{}
	for _, mi := range ms {
		source[mi.Mountpoint] = mi.Source
	}
	devs, err := loop.List()
	if err != nil {
		return nil, err
	}
	backing := map[string]string{}
	for _, d := range devs {
		backing[d.Path] = d.Backing
	}
	var images []string
	for _, l := range lowers {
		if filepath.Base(l) != layerconv.ContentDir {
			continue // the upper of a snapshot without parent
		}
		img := backing[source[filepath.Dir(l)]]
		if img == "" {
			return nil, fmt.Errorf("lower directory %s is not a mounted layer image", l)
		}
		images = append(images, img)
	}
	return images, nil
}
