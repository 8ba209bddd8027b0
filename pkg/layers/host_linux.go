package layers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/crashpoint"
	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/internal/mountinfo"
	"github.com/layervisor/layervisor/pkg/layerconv/layerfmt"
	"github.com/layervisor/layervisor/pkg/layers/overlay"
	"github.com/layervisor/layervisor/pkg/loop"
	"github.com/layervisor/layervisor/pkg/undo"
	"github.com/layervisor/layervisor/pkg/vhd"
)

// Host mounts containers' layers on this machine: each layer image is
// loop-mounted read-only once and shared; each scratch is loop-mounted once
// and shared by the containers whose scratch links to it; overlayfs
// combines them per container.
//
// The only state is one small JSON file listing the containers mounted (or
// being mounted) and the shared mounts each uses. Reference counts are
// derived from it — a shared mount's users are the containers that list it —
// so they are exact by construction, and the kernel's mount table says what
// is really mounted. Every change happens under one file lock, so several
// processes (and a process restarted after a crash) agree. Reconcile
// repairs what a crash left.
type Host struct {
	StateDir string
}

// hostState is the persistent state of a Host.
type hostState struct {
	Containers map[string]*containerRec `json:"containers"`
}

// containerRec is the record of one mounted (or mounting) container.
type containerRec struct {
	State   string      `json:"state"` // "mounting" until complete, then "mounted"
	Layers  []sharedRef `json:"layers"`
	Scratch sharedRef   `json:"scratch"`
	Rootfs  string      `json:"rootfs"`
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

// load reads the state; the lock is held.
func (h *Host) load() (*hostState, error) {
	st := &hostState{Containers: map[string]*containerRec{}}
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
	if st.Containers == nil {
		st.Containers = map[string]*containerRec{}
	}
	return st, nil
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

func (h *Host) sharedMountpoint(r sharedRef) string {
	sum := sha256.Sum256([]byte(r.Source))
	return filepath.Join(h.StateDir, "shared", hex.EncodeToString(sum[:8]))
}

func (h *Host) containerDir(id string) string {
	return filepath.Join(h.StateDir, "containers", id)
}

// RootfsPath is where a container's root file system is mounted.
func (h *Host) RootfsPath(id string) string { return filepath.Join(h.containerDir(id), "rootfs") }

// users returns the containers whose records name r, except skip.
func (st *hostState) users(r sharedRef, skip string) []string {
	var out []string
	for id, c := range st.Containers {
		if id == skip {
			continue
		}
		if c.Scratch.Source == r.Source || slices.ContainsFunc(c.Layers, func(l sharedRef) bool { return l.Source == r.Source }) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
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
	// Where each image will be mounted is known up front, so an overlay
	// that cannot be mounted (too many layers) fails before any work.
	layerMounts := make([]string, len(rec.Layers))
	for i, r := range rec.Layers {
		layerMounts[i] = h.sharedMountpoint(r)
	}
	ov, err := plan.Overlay(layerMounts, h.sharedMountpoint(rec.Scratch))
	if err != nil {
		return "", err
	}
	opts, err := ov.Options()
	if err != nil {
		return "", err
	}

	lk, err := h.lock()
	if err != nil {
		return "", err
	}
	defer lk.Release()
	st, err := h.load()
	if err != nil {
		return "", err
	}
	if _, ok := st.Containers[id]; ok {
		return "", fmt.Errorf("container %s: layers are already mounted", id)
	}
	for _, r := range append(slices.Clone(rec.Layers), rec.Scratch) {
		for _, u := range st.users(r, id) {
			o := st.Containers[u]
			if (o.Scratch.Source == r.Source) != (r == rec.Scratch) {
				return "", fmt.Errorf("%s is used as a layer by one container and as a scratch by another (%s)", r.Source, u)
			}
		}
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
		return h.save(st)
	})
	crashpoint.Hit("mount.intent-written")

	// ensure mounts r unless already mounted; the undo unmounts it if no
	// other container uses it. A mount already there is reused only if the
	// kernel says it is r's image: the mount point's name is a hash prefix
	// of r's path, never proof of what is mounted.
	ensure := func(r sharedRef) (string, error) {
		mp := h.sharedMountpoint(r)
		img, isMount, err := MountedImage(mp)
		if err != nil {
			return "", err
		}
		switch {
		case !isMount:
			if err := mountImage(r.Source, mp, r.ReadOnly); err != nil {
				return "", err
			}
		case img != r.Source:
			return "", fmt.Errorf("shared mount point %s for %s: %w (it holds %q)", mp, r.Source, ErrMountpointInUse, img)
		}
		u.Push("release "+r.Source, func(context.Context) error { return h.releaseShared(st, r, id) })
		return mp, nil
	}
	for i, r := range rec.Layers {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if _, err := ensure(r); err != nil {
			return "", fmt.Errorf("layer folder %s: %w", l.ReadOnly[i], err)
		}
		crashpoint.Hit("mount.layer-mounted")
	}
	if _, err := ensure(rec.Scratch); err != nil {
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
	lk, err := h.lock()
	if err != nil {
		return err
	}
	defer lk.Release()
	st, err := h.load()
	if err != nil {
		return err
	}
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
	if err := h.save(st); err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, r := range append([]sharedRef{rec.Scratch}, reversed(rec.Layers)...) {
		if err := h.releaseShared(st, r, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func reversed(rs []sharedRef) []sharedRef {
	out := slices.Clone(rs)
	slices.Reverse(out)
	return out
}

// releaseShared unmounts r unless a container other than id uses it.
func (h *Host) releaseShared(st *hostState, r sharedRef, id string) error {
	if len(st.users(r, id)) > 0 {
		return nil
	}
	mp := h.sharedMountpoint(r)
	if err := unmount(mp); err != nil {
		return fmt.Errorf("release %s: %w", r.Source, err)
	}
	return removeIfExists(mp)
}

// Refs returns the containers using the shared mount of an image, for
// tests and status output.
func (h *Host) Refs(imagePath string) ([]string, error) {
	src, err := filepath.EvalSymlinks(imagePath)
	if err != nil {
		return nil, err
	}
	lk, err := h.lock()
	if err != nil {
		return nil, err
	}
	defer lk.Release()
	st, err := h.load()
	if err != nil {
		return nil, err
	}
	return st.users(sharedRef{Source: src}, ""), nil
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
func (h *Host) rebuild(why error) (*hostState, error) {
	st := &hostState{Containers: map[string]*containerRec{}}
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
		if rec, ok := h.recordFromOverlay(id, m); ok {
			st.Containers[id] = rec
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

// recordFromOverlay rebuilds container id's record from its overlay mount.
func (h *Host) recordFromOverlay(id string, m mountinfo.Mount) (*containerRec, bool) {
	var lower, upper string
	for _, o := range strings.Split(m.Options, ",") {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lower = v
		} else if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			upper = v
		}
	}
	if lower == "" || upper == "" {
		return nil, false
	}
	// shared identifies the shared mount at mp, which must be named after
	// the image the kernel says it holds.
	shared := func(mp string, readOnly bool) (sharedRef, bool) {
		img, isMount, err := MountedImage(mp)
		if err != nil || !isMount || img == "" {
			return sharedRef{}, false
		}
		r := sharedRef{Source: img, ReadOnly: readOnly}
		return r, h.sharedMountpoint(r) == mp
	}
	rec := &containerRec{State: stateMounted, Rootfs: m.Mountpoint}
	for _, l := range strings.Split(lower, ":") {
		r, ok := shared(filepath.Dir(l), true)
		if !ok {
			return nil, false
		}
		rec.Layers = append(rec.Layers, r)
	}
	want := overlay.ForContainer(id, nil, layerfmt.ContentDir, "/")
	suffix := want.Upper // /scratch/<id>/upper
	smp, ok := strings.CutSuffix(upper, suffix)
	if !ok {
		return nil, false
	}
	if rec.Scratch, ok = shared(smp, false); !ok {
		return nil, false
	}
	return rec, true
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
// under StateDir that no remaining container uses are unmounted; loop devices
// backed by files under storeRoot that nothing mounts are detached.
// Completely mounted containers stay mounted and usable.
func (h *Host) Reconcile(ctx context.Context, storeRoot string) (ReconcileReport, error) {
	var rep ReconcileReport
	lk, err := h.lock()
	if err != nil {
		return rep, err
	}
	defer lk.Release()
	var errs []error
	st, err := h.load()
	if err != nil {
		// An unreadable state file (a crash of an older version, a bad
		// disk) must not block mount, unmount and gc for ever: the kernel's
		// mount table says which containers are mounted and on what, so the
		// state is made again from it; the sweep below removes the rest.
		st, err = h.rebuild(err)
		if err != nil {
			return rep, err
		}
	}
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
	if err := h.save(st); err != nil {
		errs = append(errs, err)
	}

	// Mount points under StateDir that no remaining container uses.
	known := map[string]bool{}
	for id, rec := range st.Containers {
		known[h.RootfsPath(id)] = true
		known[h.sharedMountpoint(rec.Scratch)] = true
		for _, l := range rec.Layers {
			known[h.sharedMountpoint(l)] = true
		}
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
