package layers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/crashpoint"
	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/internal/undo"
	"github.com/layervisor/layervisor/pkg/layerconv/layerfmt"
	"github.com/layervisor/layervisor/pkg/layers/overlay"
	"github.com/layervisor/layervisor/pkg/loop"
	"github.com/layervisor/layervisor/pkg/vhd"
)

// Host is the one owner of host mounts of layer images: each image is
// loop-mounted read-only once, wherever it is used from — containers
// mounted here (Mount), and other holders such as the containerd
// snapshotter's snapshots (Hold, SetHeld) — and unmounted when its last
// user goes. Each scratch is loop-mounted once and shared by the
// containers whose scratch links to it; overlayfs combines them per
// container.
//
// The only state is one small JSON file listing the containers mounted (or
// being mounted), the images each holder holds, and where each image in use
// is mounted. Reference counts are derived from it — a shared mount's users
// are the containers and holders that list its image — so they are exact
// by construction, and the kernel's mount table says what is really
// mounted. Every change happens under one file lock, so several processes
// (the CLI and `layervisor serve` sharing a root, and a process restarted
// after a crash) agree. Reconcile repairs what a crash left.
//
// Shared mounts live in StateDir/shared, named after the first 16 hex of
// the SHA-256 of the image's path, or all 64 when another image holds the
// short name: a client of the snapshotter can craft a layer whose name
// collides, and overlay options must fit in a page (see shortMountpoint).
type Host struct {
	StateDir string
}

// hostState is the persistent state of a Host.
type hostState struct {
	Containers map[string]*containerRec `json:"containers"`
	// Holders are the users of layer images other than containers (see
	// Hold): holder name → the resolved layer images it holds, sorted.
	Holders map[string][]string `json:"holders,omitempty"`
	// Mounts says where each image in use is (being) mounted: resolved
	// image path → mount point. An entry lives exactly as long as its image
	// has a user. A state written before Mounts existed gets them from the
	// names that version used (load).
	Mounts map[string]string `json:"mounts,omitempty"`
}

// containerRec is the record of one mounted (or mounting) container.
type containerRec struct {
	State   string      `json:"state"` // "mounting" until complete, then "mounted"
	Layers  []sharedRef `json:"layers"`
	Scratch sharedRef   `json:"scratch"`
	Rootfs  string      `json:"rootfs"`
}

// uses reports whether the container uses the image src.
func (c *containerRec) uses(src string) bool {
	return c.Scratch.Source == src || slices.ContainsFunc(c.Layers, func(l sharedRef) bool { return l.Source == src })
}

// sharedRef names a shared loop mount by the resolved path of its image.
type sharedRef struct {
	Source   string `json:"source"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

const (
	stateMounting = "mounting"
	stateMounted  = "mounted"
)

func (h *Host) statePath() string { return filepath.Join(h.StateDir, "state.json") }

func (h *Host) lock() (*flock.Lock, error) {
	if err := os.MkdirAll(filepath.Join(h.StateDir, "shared"), 0o700); err != nil {
		return nil, fmt.Errorf("host layer state: %w", err)
	}
	return flock.Acquire(filepath.Join(h.StateDir, "lock"))
}

// open takes the lock and reads the state; the caller releases the lock.
// With rebuildCorrupt, an unreadable state is made again from the kernel's
// mount table (rebuild) instead of failing.
func (h *Host) open(rebuildCorrupt bool) (*flock.Lock, *hostState, error) {
	lk, err := h.lock()
	if err != nil {
		return nil, nil, err
	}
	st, err := h.load()
	if err != nil && rebuildCorrupt {
		st, err = h.rebuild(err)
	}
	if err != nil {
		lk.Release()
		return nil, nil, err
	}
	return lk, st, nil
}

// load reads the state; the lock is held.
func (h *Host) load() (*hostState, error) {
	st := &hostState{}
	st.init()
	b, err := os.ReadFile(h.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("host layer state: %w", err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("host layer state %s is corrupt (%w): run `layervisor gc`, which rebuilds it from the kernel's mount table", h.statePath(), err)
	}
	st.init()
	// A state an older version wrote has no mount entries: its shared
	// mounts are where that version put every image, at the short name.
	for _, c := range st.Containers {
		for _, r := range append([]sharedRef{c.Scratch}, c.Layers...) {
			if _, ok := st.Mounts[r.Source]; !ok && r.Source != "" {
				st.Mounts[r.Source] = h.shortMountpoint(r.Source)
			}
		}
	}
	return st, nil
}

func (st *hostState) init() {
	if st.Containers == nil {
		st.Containers = map[string]*containerRec{}
	}
	if st.Holders == nil {
		st.Holders = map[string][]string{}
	}
	if st.Mounts == nil {
		st.Mounts = map[string]string{}
	}
}

// save writes the state through a fixed temp name (the lock is held, so
// no other writer can use it) and a rename. The temp file is flushed before
// the rename and the directory after it: otherwise a power cut can leave
// the new name pointing at an empty or partly written file (ext4 and
// others may commit the rename before the data), or lose the rename.
func (h *Host) save(st *hostState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := h.statePath() + ".tmp"
	if err := writeSynced(tmp, b); err != nil {
		return fmt.Errorf("host layer state %s: %w", tmp, err)
	}
	crashpoint.Hit("hoststate.tmp-synced")
	if err := os.Rename(tmp, h.statePath()); err != nil {
		return fmt.Errorf("host layer state %s: %w", h.statePath(), err)
	}
	if err := syncDir(h.StateDir); err != nil {
		return fmt.Errorf("host layer state %s: %w", h.statePath(), err)
	}
	return nil
}

// writeSynced writes b to path (truncating it) and flushes it to disk.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// shortMountpoint is where an image is mounted unless another image holds
// the name: shared/<first 16 hex of the SHA-256 of its path>.
//
// The name cannot always be the full hash: an overlay's options must fit
// in one page (4096 bytes; containerd's mount code refuses longer ones),
// and containerd shortens a long lowerdir of a snapshot only to paths
// relative to their common directory, shared/. An image of 128 layers then
// needs 128 × len("<name>/content:") - 1 bytes: 3199 with 16 hex, 9343 with
// 64, more than two pages before upperdir and workdir are even counted. So
// the short name stays, and it is never trusted as an identity: which
// image a mount holds is recorded in the state and checked against the
// kernel (the loop device's backing file, MountedImage); a second image
// whose short name is taken gets the full name (fullMountpoint), which
// cannot collide; and a mount point in use is never mounted over
// (MountImage).
func (h *Host) shortMountpoint(src string) string {
	sum := sha256.Sum256([]byte(src))
	return filepath.Join(h.StateDir, "shared", hex.EncodeToString(sum[:8]))
}

func (h *Host) fullMountpoint(src string) string {
	sum := sha256.Sum256([]byte(src))
	return filepath.Join(h.StateDir, "shared", hex.EncodeToString(sum[:]))
}

// place returns where src is mounted, giving it a mount point (recorded in
// st) if it has none: the short name, or the full one when another image
// holds the short name.
func (h *Host) place(st *hostState, src string) string {
	if mp, ok := st.Mounts[src]; ok {
		return mp
	}
	mp := h.shortMountpoint(src)
	for other, at := range st.Mounts {
		if at == mp && other != src {
			slog.Warn("host layer mounts: two images share a mount name prefix; the second gets the full name", "image", src, "holder", other)
			mp = h.fullMountpoint(src)
			break
		}
	}
	st.Mounts[src] = mp
	return mp
}

// isPlaceOf reports whether mp is a name Host gives src's mount.
func (h *Host) isPlaceOf(src, mp string) bool {
	return mp == h.shortMountpoint(src) || mp == h.fullMountpoint(src)
}

func (h *Host) containerDir(id string) string {
	return filepath.Join(h.StateDir, "containers", id)
}

// RootfsPath is where a container's root file system is mounted.
func (h *Host) RootfsPath(id string) string { return filepath.Join(h.containerDir(id), "rootfs") }

// holderPrefix marks holders among the users Refs returns (container
// ids cannot hold a '/').
const holderPrefix = "holder/"

// users returns who uses the image src, except container skip: container
// ids, then holders as "holder/<name>", each sorted.
func (st *hostState) users(src, skip string) []string {
	var out, held []string
	for id, c := range st.Containers {
		if id != skip && c.uses(src) {
			out = append(out, id)
		}
	}
	for name, imgs := range st.Holders {
		if slices.Contains(imgs, src) {
			held = append(held, holderPrefix+name)
		}
	}
	slices.Sort(out)
	slices.Sort(held)
	return append(out, held...)
}

// checkAccess refuses r when another user (except container skip) uses its
// image the other way: as a read-only layer where r is a scratch, or as a
// scratch where r is a layer.
func (st *hostState) checkAccess(r sharedRef, skip string) error {
	for _, id := range slices.Sorted(maps.Keys(st.Containers)) {
		c := st.Containers[id]
		if id == skip || !c.uses(r.Source) {
			continue
		}
		if (c.Scratch.Source == r.Source) == r.ReadOnly {
			return fmt.Errorf("%s is used as a layer by one container and as a scratch by another (%s)", r.Source, id)
		}
	}
	if !r.ReadOnly {
		for name, imgs := range st.Holders {
			if slices.Contains(imgs, r.Source) {
				return fmt.Errorf("%s is held as a layer by %s and cannot be a scratch", r.Source, name)
			}
		}
	}
	return nil
}

// prune drops the mount entries of images nobody uses and returns them
// (image → mount point): the caller unmounts them once the state is saved.
func (st *hostState) prune() map[string]string {
	dropped := map[string]string{}
	for src, mp := range st.Mounts {
		if len(st.users(src, "")) == 0 {
			dropped[src] = mp
			delete(st.Mounts, src)
		}
	}
	return dropped
}

// unmountDropped unmounts and removes the mount points prune dropped,
// keeping going past failures.
func unmountDropped(dropped map[string]string) error {
	srcs := make([]string, 0, len(dropped))
	for src := range dropped {
		srcs = append(srcs, src)
	}
	slices.Sort(srcs)
	var errs []error
	for _, src := range srcs {
		if err := UnmountAndRemove(dropped[src]); err != nil {
			errs = append(errs, fmt.Errorf("release %s: %w", src, err))
		}
	}
	return errors.Join(errs...)
}

// UnmountAndRemove unmounts mp (every mount stacked there) and removes the
// empty mount point; a missing one counts as done.
func UnmountAndRemove(mp string) error {
	if err := unmount(mp); err != nil {
		return err
	}
	if err := os.Remove(mp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// ensureMounted mounts r's image at mp unless the kernel says mp holds it
// already. A mount point holding anything else is never mounted over: a
// mount there is reused only if it is r's image, whatever its name says.
func ensureMounted(r sharedRef, mp string) error {
	img, isMount, err := MountedImage(mp)
	if err != nil {
		return err
	}
	switch {
	case !isMount:
		return mountImage(r.Source, mp, r.ReadOnly)
	case img != r.Source:
		return fmt.Errorf("shared mount point %s for %s: %w (it holds %q)", mp, r.Source, ErrMountpointInUse, img)
	}
	return nil
}

// Mount mounts the container's layers and returns the root file system path.
func (h *Host) Mount(ctx context.Context, id string, l Layers) (rootfs string, err error) {
	// Resolve sources before taking the lock: bad input fails fast.
	plan, err := NewPlan(id, l)
	if err != nil {
		return "", err
	}
	if plan.ScratchIsVHDX() {
		return "", fmt.Errorf("scratch %s: %w", plan.Scratch, ErrVHDXScratchOnHost)
	}
	rec := &containerRec{State: stateMounting, Rootfs: h.RootfsPath(id)}
	for _, p := range plan.Layers {
		rec.Layers = append(rec.Layers, sharedRef{Source: p, ReadOnly: true})
	}
	rec.Scratch = sharedRef{Source: plan.Scratch}

	lk, st, err := h.open(false)
	if err != nil {
		return "", err
	}
	defer lk.Release()
	if _, ok := st.Containers[id]; ok {
		return "", fmt.Errorf("container %s: layers are already mounted", id)
	}
	for _, r := range append(slices.Clone(rec.Layers), rec.Scratch) {
		if err := st.checkAccess(r, id); err != nil {
			return "", err
		}
	}
	// Where each image is (or will be) mounted is known before any work,
	// so an overlay that cannot be mounted (too many layers) fails first.
	layerMounts := make([]string, len(rec.Layers))
	for i, r := range rec.Layers {
		layerMounts[i] = h.place(st, r.Source)
	}
	ov, err := plan.Overlay(layerMounts, h.place(st, rec.Scratch.Source))
	if err != nil {
		return "", err
	}
	opts, err := ov.Options()
	if err != nil {
		return "", err
	}
	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	// The intent record comes first so that Reconcile can undo a crash.
	st.Containers[id] = rec
	if err := h.save(st); err != nil {
		delete(st.Containers, id)
		return "", err
	}
	u.Push("remove container record", func(context.Context) error {
		delete(st.Containers, id)
		st.prune() // the releases below unmounted what only this container used
		return h.save(st)
	})
	crashpoint.Hit("mount.intent-written")

	// ensure mounts r unless already mounted; the undo unmounts it if
	// nobody else uses it.
	ensure := func(r sharedRef) error {
		if err := ensureMounted(r, st.Mounts[r.Source]); err != nil {
			return err
		}
		u.Push("release "+r.Source, func(context.Context) error { return h.releaseShared(st, r, id) })
		return nil
	}
	for i, r := range rec.Layers {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if err := ensure(r); err != nil {
			return "", fmt.Errorf("layer folder %s: %w", l.ReadOnly[i], err)
		}
		crashpoint.Hit("mount.layer-mounted")
	}
	if err := ensure(rec.Scratch); err != nil {
		return "", fmt.Errorf("scratch folder %s: %w", l.Scratch, err)
	}
	for _, d := range []string{ov.Upper, ov.Work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", fmt.Errorf("scratch of %s: %w", id, err)
		}
	}
	if err := os.MkdirAll(rec.Rootfs, 0o755); err != nil {
		return "", fmt.Errorf("rootfs dir: %w", err)
	}
	u.Push("remove rootfs dir", func(context.Context) error { return removeIfExists(h.containerDir(id)) })
	// nodev: a layer may carry device nodes (the OCI layer spec allows
	// them); a container gets its /dev from the runtime, never from them.
	if err := unix.Mount("overlay", rec.Rootfs, "overlay", unix.MS_NODEV, opts); err != nil {
		return "", fmt.Errorf("mount overlay for %s: %w", id, err)
	}
	u.Push("unmount overlay", func(context.Context) error { return unmount(rec.Rootfs) })
	crashpoint.Hit("mount.overlay-mounted")

	rec.State = stateMounted
	if err := h.save(st); err != nil {
		return "", err
	}
	u.Commit()
	slog.Debug("mounted container layers", "id", id, "rootfs", rec.Rootfs, "layers", len(layerMounts))
	return rec.Rootfs, nil
}

// Unmount unmounts the container's root file system and releases its layer
// and scratch mounts. On the host only UnmountAll is valid. It keeps going
// past failures and returns them joined.
func (h *Host) Unmount(ctx context.Context, id string, op UnmountOp) error {
	if op != UnmountAll {
		return fmt.Errorf("host layers support only the \"all\" unmount operation, not %q", op)
	}
	if err := validID(id); err != nil {
		return err
	}
	lk, st, err := h.open(false)
	if err != nil {
		return err
	}
	defer lk.Release()
	if _, ok := st.Containers[id]; !ok {
		return fmt.Errorf("container %s: %w", id, ErrNotMounted)
	}
	return h.teardown(st, id)
}

// teardown unmounts a container's overlay, drops its record and releases
// the shared mounts nobody else uses. The lock is held.
func (h *Host) teardown(st *hostState, id string) error {
	rec := st.Containers[id]
	if err := unmount(rec.Rootfs); err != nil {
		// With the overlay still mounted its lower and upper mounts are
		// busy: keep the record so a later unmount or gc can retry.
		return fmt.Errorf("container %s: %w", id, err)
	}
	crashpoint.Hit("unmount.overlay-unmounted")
	var errs []error
	if err := removeIfExists(h.containerDir(id)); err != nil {
		errs = append(errs, err)
	}
	delete(st.Containers, id)
	dropped := st.prune()
	if err := h.save(st); err != nil {
		return errors.Join(append(errs, err)...)
	}
	// Unmounted once the state no longer lists them: a crash in between
	// leaves mounts nobody uses, which Reconcile removes.
	for _, r := range append([]sharedRef{rec.Scratch}, reversed(rec.Layers)...) {
		if mp, ok := dropped[r.Source]; ok {
			delete(dropped, r.Source)
			if err := UnmountAndRemove(mp); err != nil {
				errs = append(errs, fmt.Errorf("release %s: %w", r.Source, err))
			}
		}
	}
	return errors.Join(append(errs, unmountDropped(dropped))...)
}

func reversed(rs []sharedRef) []sharedRef {
	out := slices.Clone(rs)
	slices.Reverse(out)
	return out
}

// releaseShared unmounts r (the undo of a mount that failed part way)
// unless a user other than container id uses it; the entry goes with the
// container's record.
func (h *Host) releaseShared(st *hostState, r sharedRef, id string) error {
	if len(st.users(r.Source, id)) > 0 {
		return nil
	}
	if err := UnmountAndRemove(st.Mounts[r.Source]); err != nil {
		return fmt.Errorf("release %s: %w", r.Source, err)
	}
	return nil
}

// Refs returns who uses the shared mount of an image — container ids, then
// holders (Hold) as "holder/<name>" — for tests and status output.
func (h *Host) Refs(imagePath string) ([]string, error) {
	src, err := filepath.EvalSymlinks(imagePath)
	if err != nil {
		return nil, err
	}
	lk, st, err := h.open(false)
	if err != nil {
		return nil, err
	}
	defer lk.Release()
	return st.users(src, ""), nil
}

// IsMounted reports whether the container's layers are completely mounted.
func (h *Host) IsMounted(id string) bool {
	if validID(id) != nil {
		return false
	}
	b, err := os.ReadFile(h.statePath())
	if err != nil {
		return false
	}
	var st hostState
	if json.Unmarshal(b, &st) != nil {
		return false
	}
	rec, ok := st.Containers[id]
	return ok && rec.State == stateMounted
}

// mountImage loop-attaches an ext4 image and mounts it at mp.
func mountImage(source, mp string, readOnly bool) (err error) {
	return MountImage(source, mp, readOnly)
}

// MountImage loop-attaches an ext4 image (autoclear) and mounts it at mp
// (created if needed), nodev and nosuid. A read-only layer image's fixed
// VHD footer is hidden from the file system; a writable image is raw ext4
// and is not probed for one (what it holds was written by containers).
func MountImage(source, mp string, readOnly bool) (err error) {
	// Never a second mount on top of one already there: whoever reads
	// mp would see the new one while the old one's users keep the old.
	if img, isMount, err := MountedImage(mp); err != nil {
		return err
	} else if isMount {
		return fmt.Errorf("mount %s at %s: %w (it holds %q)", source, mp, ErrMountpointInUse, img)
	}
	st, err := os.Stat(source)
	if err != nil {
		return err
	}
	opts := loop.Options{ReadOnly: readOnly}
	if readOnly {
		f, err := os.Open(source)
		if err != nil {
			return err
		}
		if _, ferr := vhd.ReadFooter(f, st.Size()); ferr == nil {
			opts.SizeLimit = st.Size() - vhd.FooterSize
		}
		f.Close()
	}
	dev, err := loop.Attach(source, opts)
	if err != nil {
		return err
	}
	// Once mounted, the mount holds the device; autoclear frees it at umount.
	defer dev.Close()
	if err := os.MkdirAll(mp, 0o700); err != nil {
		return err
	}
	var flags uintptr = unix.MS_NODEV | unix.MS_NOSUID
	data := ""
	if readOnly {
		flags |= unix.MS_RDONLY
		data = "noload" // never replay a journal on a shared read-only layer
	}
	if err := unix.Mount(dev.Path, mp, "ext4", flags, data); err != nil {
		os.Remove(mp)
		return fmt.Errorf("mount %s (%s) at %s: %w", source, dev.Path, mp, err)
	}
	return nil
}

// ErrMountpointInUse: something is mounted where a mount was to go.
var ErrMountpointInUse = errors.New("mount point is already in use")

// MountedImage says whether mp is a mount point and, when a loop device is
// mounted there, which file backs it (the kernel's path for it, with a
// " (deleted)" suffix if the file was removed); image is "" for other
// mounts. It is what a shared mount holds, from the kernel rather than from
// its name. A missing mp is not a mount point.
func MountedImage(mp string) (image string, isMount bool, err error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, mp, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO, &stx); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("stat mount point %s: %w", mp, err)
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return "", false, fmt.Errorf("stat mount point %s: the kernel does not report mount roots (statx needs Linux 5.8)", mp)
	}
	if stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return "", false, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/loop/backing_file", stx.Dev_major, stx.Dev_minor))
	if err != nil {
		return "", true, nil // not a loop device
	}
	return strings.TrimSuffix(string(b), "\n"), true, nil
}

func unmount(mp string) error { return Unmount(mp) }

// Unmount unmounts mp, every mount stacked on it; "not mounted" and
// "missing" count as done.
func Unmount(mp string) error {
	for {
		err := unix.Unmount(mp, 0)
		switch {
		case err == nil:
			continue // stacked mounts: peel until none is left
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		default:
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
	}
}

func removeIfExists(p string) error {
	if err := os.RemoveAll(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// rebuild makes the state again from the kernel's mount table after the
// state file could not be read (why): every container overlay mounted at
// containers/<id>/rootfs whose lower and upper directories are on shared
// mounts of this StateDir becomes a mounted record, each shared mount
// identified by the image behind its loop device (and checked against its
// name). Whatever cannot be explained that way is left out, so the sweep
// unmounts it. The unreadable file is kept as state.json.corrupt.
//
// Holders (Hold) leave no trace in the mount table, so their holds are
// lost, and the sweep unmounts their mounts unless a container uses them:
// a holder takes them again when it next starts (`layervisor serve`
// reconciles with SetHeld).
func (h *Host) rebuild(why error) (*hostState, error) {
	st := &hostState{}
	st.init()
	ms, err := mountinfo.Read()
	if err != nil {
		return nil, fmt.Errorf("rebuild host layer state %s: %w", h.statePath(), err)
	}
	var skipped []string
	for _, m := range ms {
		if m.FSType != "overlay" || filepath.Base(m.Mountpoint) != "rootfs" {
			continue
		}
		id := filepath.Base(filepath.Dir(m.Mountpoint))
		if validID(id) != nil || m.Mountpoint != h.RootfsPath(id) {
			continue
		}
		if rec, mounts, ok := h.recordFromOverlay(id, m); ok {
			st.Containers[id] = rec
			maps.Copy(st.Mounts, mounts)
		} else {
			skipped = append(skipped, id)
		}
	}
	keep := h.statePath() + ".corrupt"
	if err := os.Rename(h.statePath(), keep); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Warn("cannot keep the unreadable host layer state aside", "state", h.statePath(), "err", err)
		keep = ""
	}
	ids := make([]string, 0, len(st.Containers))
	for id := range st.Containers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	slog.Warn("host layer state was unreadable: rebuilt from the kernel's mount table",
		"state", h.statePath(), "err", why, "keptAs", keep, "containers", ids, "unexplained", skipped)
	return st, nil
}

// recordFromOverlay rebuilds container id's record from its overlay mount,
// with where its images are mounted.
func (h *Host) recordFromOverlay(id string, m mountinfo.Mount) (*containerRec, map[string]string, bool) {
	var lower, upper string
	for _, o := range strings.Split(m.Options, ",") {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lower = v
		} else if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			upper = v
		}
	}
	if lower == "" || upper == "" {
		return nil, nil, false
	}
	mounts := map[string]string{}
	// shared identifies the shared mount at mp, which must be named after
	// the image the kernel says it holds.
	shared := func(mp string, readOnly bool) (sharedRef, bool) {
		img, isMount, err := MountedImage(mp)
		if err != nil || !isMount || img == "" || !h.isPlaceOf(img, mp) {
			return sharedRef{}, false
		}
		mounts[img] = mp
		return sharedRef{Source: img, ReadOnly: readOnly}, true
	}
	rec := &containerRec{State: stateMounted, Rootfs: m.Mountpoint}
	for _, l := range strings.Split(lower, ":") {
		r, ok := shared(filepath.Dir(l), true)
		if !ok {
			return nil, nil, false
		}
		rec.Layers = append(rec.Layers, r)
	}
	want := overlay.ForContainer(id, nil, layerfmt.ContentDir, "/")
	suffix := want.Upper // /scratch/<id>/upper
	smp, ok := strings.CutSuffix(upper, suffix)
	if !ok {
		return nil, nil, false
	}
	if rec.Scratch, ok = shared(smp, false); !ok {
		return nil, nil, false
	}
	return rec, mounts, true
}

// ReconcileReport says what Reconcile repaired.
type ReconcileReport struct {
	RolledBack []string `json:"rolledBack,omitempty"` // containers whose mount was incomplete
	Unmounted  []string `json:"unmounted,omitempty"`  // stray mount points
	Detached   []string `json:"detached,omitempty"`   // stray loop devices
	Kept       []string `json:"kept,omitempty"`       // mounted containers left intact
}

// Reconcile repairs the state a crash can leave: a container whose mount
// did not complete (or whose overlay is gone) is rolled back; mount points
// under StateDir that no remaining container or holder uses are unmounted;
// loop devices backed by files under storeRoot that nothing mounts are
// detached. Completely mounted containers stay mounted and usable, and
// holds stay as they are: a holder's own start (SetHeld) says what it
// holds, and mounts what a crash or a reboot took away.
func (h *Host) Reconcile(ctx context.Context, storeRoot string) (ReconcileReport, error) {
	var rep ReconcileReport
	// An unreadable state file (a crash of an older version, a bad disk)
	// must not block mount, unmount and gc for ever: the kernel's mount
	// table says which containers are mounted and on what, so the state is
	// made again from it; the sweep below removes the rest.
	lk, st, err := h.open(true)
	if err != nil {
		return rep, err
	}
	defer lk.Release()
	var errs []error
	mounted, err := mountinfo.Mountpoints()
	if err != nil {
		return rep, err
	}
	var ids []string
	for id := range st.Containers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		rec := st.Containers[id]
		if rec.State == stateMounted && mounted[rec.Rootfs] {
			rep.Kept = append(rep.Kept, id)
			continue
		}
		if err := h.teardown(st, id); err != nil {
			errs = append(errs, err)
		}
		rep.RolledBack = append(rep.RolledBack, id)
	}
	dropped := st.prune()
	if err := h.save(st); err != nil {
		errs = append(errs, err)
	}
	if err := unmountDropped(dropped); err != nil {
		errs = append(errs, err)
	}

	// Mount points under StateDir that no remaining container or holder uses.
	known := map[string]bool{}
	for id := range st.Containers {
		known[h.RootfsPath(id)] = true
	}
	for _, mp := range st.Mounts {
		known[mp] = true
	}
	ms, err := mountinfo.Read()
	if err != nil {
		errs = append(errs, err)
	}
	prefix := filepath.Clean(h.StateDir) + string(filepath.Separator)
	// Deepest first, so overlays go before the mounts beneath them.
	slices.SortFunc(ms, func(a, b mountinfo.Mount) int { return len(b.Mountpoint) - len(a.Mountpoint) })
	for _, m := range ms {
		if !strings.HasPrefix(m.Mountpoint, prefix) || known[m.Mountpoint] {
			continue
		}
		if err := unmount(m.Mountpoint); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Unmounted = append(rep.Unmounted, m.Mountpoint)
		os.Remove(m.Mountpoint)
	}
	os.Remove(h.statePath() + ".tmp")

	// Loop devices backed by our files but not mounted anywhere.
	if storeRoot != "" {
		devs, err := loop.List()
		if err != nil {
			errs = append(errs, err)
		}
		ms, _ = mountinfo.Read()
		inUse := map[string]bool{}
		for _, m := range ms {
			inUse[m.Source] = true
		}
		rootPrefix := filepath.Clean(storeRoot) + string(filepath.Separator)
		for _, d := range devs {
			if strings.HasPrefix(d.Backing, rootPrefix) && !inUse[d.Path] {
				if err := loop.Detach(d.Path); err != nil {
					errs = append(errs, err)
					continue
				}
				rep.Detached = append(rep.Detached, d.Path)
			}
		}
	}
	_ = ctx
	return rep, errors.Join(errs...)
}
