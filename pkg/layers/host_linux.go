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
		return nil, fmt.Errorf("host layer state %s is corrupt: %w", h.statePath(), err)
	}
	if st.Containers == nil {
		st.Containers = map[string]*containerRec{}
	}
	return st, nil
}

// save writes the state through a fixed temp name (the lock is held, so
// no other writer can use it) and a rename.
func (h *Host) save(st *hostState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := h.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("host layer state: %w", err)
	}
	if err := os.Rename(tmp, h.statePath()); err != nil {
		return fmt.Errorf("host layer state: %w", err)
	}
	return nil
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
	mounted, err := mountinfo.Mountpoints()
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
		return h.save(st)
	})
	crashpoint.Hit("mount.intent-written")

	// ensure mounts r unless already mounted; the undo unmounts it if no
	// other container uses it.
	ensure := func(r sharedRef) (string, error) {
		mp := h.sharedMountpoint(r)
		if !mounted[mp] {
			if err := mountImage(r.Source, mp, r.ReadOnly); err != nil {
				return "", err
			}
			mounted[mp] = true
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
	if err := unix.Mount("overlay", rec.Rootfs, "overlay", 0, opts); err != nil {
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
	st, err := h.load()
	if err != nil {
		// A corrupt state file cannot be trusted: start over from the
		// mount table, which the sweep below cleans.
		slog.Warn("discarding corrupt host layer state", "err", err)
		st = &hostState{Containers: map[string]*containerRec{}}
	}
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
