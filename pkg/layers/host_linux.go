package layers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/atomicfile"
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
// Shared mounts are reference-counted by the set of container ids using them,
// kept in small JSON records under StateDir so that several processes (and a
// process restarted after a crash) agree. Every state change happens under
// one file lock. Reconcile repairs what a crash left.
type Host struct {
	StateDir string
}

// shared is the record of a loop mount used by one or more containers.
type shared struct {
	Source     string   `json:"source"` // resolved image path
	ReadOnly   bool     `json:"readOnly"`
	Mountpoint string   `json:"mountpoint"`
	Users      []string `json:"users"`
}

// containerRec is the record of one mounted (or mounting) container.
type containerRec struct {
	ID      string   `json:"id"`
	State   string   `json:"state"` // "mounting" until complete, then "mounted"
	Layers  []string `json:"layers"`
	Scratch string   `json:"scratch"` // key of the scratch mount
	Rootfs  string   `json:"rootfs"`
}

const (
	stateMounting = "mounting"
	stateMounted  = "mounted"
)

func (h *Host) lock() (*flock.Lock, error) {
	if err := os.MkdirAll(filepath.Join(h.StateDir, "shared"), 0o700); err != nil {
		return nil, fmt.Errorf("host layer state: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(h.StateDir, "containers"), 0o700); err != nil {
		return nil, fmt.Errorf("host layer state: %w", err)
	}
	return flock.Acquire(filepath.Join(h.StateDir, "lock"))
}

func (h *Host) sharedPath(key string) string {
	return filepath.Join(h.StateDir, "shared", key+".json")
}
func (h *Host) sharedMountpoint(key string) string {
	return filepath.Join(h.StateDir, "shared", key)
}
func (h *Host) containerPath(id string) string {
	return filepath.Join(h.StateDir, "containers", id+".json")
}
func (h *Host) containerDir(id string) string {
	return filepath.Join(h.StateDir, "containers", id)
}

// RootfsPath is where a container's root file system is mounted.
func (h *Host) RootfsPath(id string) string { return filepath.Join(h.containerDir(id), "rootfs") }

// sharedKey names a shared mount by the resolved path of its image.
func sharedKey(source string) string {
	sum := sha256.Sum256([]byte(source))
	return hex.EncodeToString(sum[:8])
}

// Mount mounts the container's layers and returns the root file system path.
func (h *Host) Mount(ctx context.Context, id string, l Layers) (rootfs string, err error) {
	if err := validID(id); err != nil {
		return "", err
	}
	if len(l.ReadOnly) == 0 || l.Scratch == "" {
		return "", ErrTooFewLayers
	}
	// Resolve sources before taking the lock: bad input fails fast.
	var sources []string
	for _, f := range l.ReadOnly {
		p, err := filepath.EvalSymlinks(layerImage(f))
		if err != nil {
			return "", fmt.Errorf("layer folder %s: %w", f, err)
		}
		sources = append(sources, p)
	}
	scratchSrc, err := filepath.EvalSymlinks(filepath.Join(l.Scratch, ScratchFile))
	if err != nil {
		return "", fmt.Errorf("scratch folder %s: %w", l.Scratch, err)
	}

	lk, err := h.lock()
	if err != nil {
		return "", err
	}
	defer lk.Release()

	if _, err := os.Stat(h.containerPath(id)); err == nil {
		return "", fmt.Errorf("container %s: layers are already mounted", id)
	}
	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)

	rec := containerRec{ID: id, State: stateMounting, Rootfs: h.RootfsPath(id), Scratch: sharedKey(scratchSrc)}
	for _, s := range sources {
		rec.Layers = append(rec.Layers, sharedKey(s))
	}
	// The intent record comes first so that Reconcile can undo a crash.
	if err := atomicfile.WriteJSON(h.containerPath(id), rec, false); err != nil {
		return "", err
	}
	u.Push("remove container record", func(context.Context) error { return removeIfExists(h.containerPath(id)) })
	crashpoint.Hit("mount.intent-written")

	lowers := make([]string, len(sources))
	for i, s := range sources {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		mp, err := h.acquire(s, true, id)
		if err != nil {
			return "", fmt.Errorf("layer folder %s: %w", l.ReadOnly[i], err)
		}
		u.Push("release layer "+s, func(context.Context) error { return h.release(rec.Layers[i], id) })
		lowers[i] = mp
		crashpoint.Hit("mount.layer-mounted")
	}
	scratchMp, err := h.acquire(scratchSrc, false, id)
	if err != nil {
		return "", fmt.Errorf("scratch folder %s: %w", l.Scratch, err)
	}
	u.Push("release scratch", func(context.Context) error { return h.release(rec.Scratch, id) })

	// Upper and work live in a per-container directory of the scratch, so
	// that containers sharing a scratch keep separate changes.
	base := filepath.Join(scratchMp, "scratch", id)
	upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", fmt.Errorf("scratch of %s: %w", id, err)
		}
	}
	if err := os.MkdirAll(rec.Rootfs, 0o755); err != nil {
		return "", fmt.Errorf("rootfs dir: %w", err)
	}
	u.Push("remove rootfs dir", func(context.Context) error { return removeIfExists(h.containerDir(id)) })
	opts := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + upper + ",workdir=" + work
	if len(opts) > 4000 {
		return "", fmt.Errorf("container %s: %d layers make overlay options too long (%d bytes)", id, len(lowers), len(opts))
	}
	if err := unix.Mount("overlay", rec.Rootfs, "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("mount overlay for %s: %w", id, err)
	}
	u.Push("unmount overlay", func(context.Context) error { return unmount(rec.Rootfs) })
	crashpoint.Hit("mount.overlay-mounted")

	rec.State = stateMounted
	if err := atomicfile.WriteJSON(h.containerPath(id), rec, false); err != nil {
		return "", err
	}
	u.Commit()
	slog.Debug("mounted container layers", "id", id, "rootfs", rec.Rootfs, "layers", len(lowers))
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
	var rec containerRec
	if err := atomicfile.ReadJSON(h.containerPath(id), &rec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("container %s: %w", id, ErrNotMounted)
		}
		return err
	}
	return h.teardown(rec)
}

// teardown releases everything a container record names. Lock held.
func (h *Host) teardown(rec containerRec) error {
	var errs []error
	if err := unmount(rec.Rootfs); err != nil {
		// With the overlay still mounted its lower and upper mounts are
		// busy: keep the record so a later unmount or gc can retry.
		return fmt.Errorf("container %s: %w", rec.ID, err)
	}
	crashpoint.Hit("unmount.overlay-unmounted")
	if err := removeIfExists(h.containerDir(rec.ID)); err != nil {
		errs = append(errs, err)
	}
	if rec.Scratch != "" {
		if err := h.release(rec.Scratch, rec.ID); err != nil {
			errs = append(errs, fmt.Errorf("scratch: %w", err))
		}
	}
	for i := len(rec.Layers) - 1; i >= 0; i-- {
		if err := h.release(rec.Layers[i], rec.ID); err != nil {
			errs = append(errs, fmt.Errorf("layer %s: %w", rec.Layers[i], err))
		}
	}
	if len(errs) == 0 {
		if err := removeIfExists(h.containerPath(rec.ID)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// acquire adds user to the shared mount of source, mounting it first when
// nobody uses it. Lock held.
func (h *Host) acquire(source string, readOnly bool, user string) (string, error) {
	key := sharedKey(source)
	var rec shared
	err := atomicfile.ReadJSON(h.sharedPath(key), &rec)
	switch {
	case errors.Is(err, os.ErrNotExist):
		rec = shared{Source: source, ReadOnly: readOnly, Mountpoint: h.sharedMountpoint(key)}
	case err != nil:
		return "", err
	case rec.ReadOnly != readOnly:
		return "", fmt.Errorf("%s is mounted read-only=%v, requested read-only=%v", source, rec.ReadOnly, readOnly)
	}
	if len(rec.Users) == 0 {
		if err := mountImage(source, rec.Mountpoint, readOnly); err != nil {
			return "", err
		}
	}
	if !slices.Contains(rec.Users, user) {
		rec.Users = append(rec.Users, user)
	}
	if err := atomicfile.WriteJSON(h.sharedPath(key), rec, false); err != nil {
		if len(rec.Users) == 1 {
			unmount(rec.Mountpoint)
		}
		return "", err
	}
	return rec.Mountpoint, nil
}

// release drops user from a shared mount, unmounting it at zero. Lock held.
func (h *Host) release(key, user string) error {
	var rec shared
	if err := atomicfile.ReadJSON(h.sharedPath(key), &rec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	rec.Users = slices.DeleteFunc(rec.Users, func(u string) bool { return u == user })
	if len(rec.Users) > 0 {
		return atomicfile.WriteJSON(h.sharedPath(key), rec, false)
	}
	if err := unmount(rec.Mountpoint); err != nil {
		return err
	}
	return errors.Join(removeIfExists(rec.Mountpoint), removeIfExists(h.sharedPath(key)))
}

// Refs returns the users of the shared mount of an image, for tests and
// status output.
func (h *Host) Refs(imagePath string) ([]string, error) {
	src, err := filepath.EvalSymlinks(imagePath)
	if err != nil {
		return nil, err
	}
	var rec shared
	if err := atomicfile.ReadJSON(h.sharedPath(sharedKey(src)), &rec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	return rec.Users, nil
}

// mountImage loop-attaches an ext4 image and mounts it at mp.
func mountImage(source, mp string, readOnly bool) (err error) {
	st, err := os.Stat(source)
	if err != nil {
		return err
	}
	opts := loop.Options{ReadOnly: readOnly}
	if f, err := os.Open(source); err == nil {
		// Hide a VHD footer from the file system.
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

// unmount unmounts mp; "not mounted" and "missing" count as done.
func unmount(mp string) error {
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
// did not complete is rolled back; shared mounts whose users are gone are
// unmounted; mount points under StateDir without a record are unmounted; loop
// devices backed by files under storeRoot that nothing mounts are detached.
// Completely mounted containers stay mounted and usable.
func (h *Host) Reconcile(ctx context.Context, storeRoot string) (ReconcileReport, error) {
	var rep ReconcileReport
	lk, err := h.lock()
	if err != nil {
		return rep, err
	}
	defer lk.Release()
	var errs []error

	live := map[string]bool{}
	recs, _ := filepath.Glob(filepath.Join(h.StateDir, "containers", "*.json"))
	for _, p := range recs {
		var rec containerRec
		if err := atomicfile.ReadJSON(p, &rec); err != nil {
			errs = append(errs, err)
			os.Remove(p)
			continue
		}
		mounted, _ := mountinfo.Mountpoints()
		if rec.State == stateMounted && mounted[rec.Rootfs] {
			live[rec.ID] = true
			rep.Kept = append(rep.Kept, rec.ID)
			continue
		}
		if err := h.teardown(rec); err != nil {
			errs = append(errs, err)
		}
		rep.RolledBack = append(rep.RolledBack, rec.ID)
	}

	// Shared mounts: keep only live users.
	shareds, _ := filepath.Glob(filepath.Join(h.StateDir, "shared", "*.json"))
	for _, p := range shareds {
		var rec shared
		if err := atomicfile.ReadJSON(p, &rec); err != nil {
			errs = append(errs, err)
			os.Remove(p)
			continue
		}
		key := strings.TrimSuffix(filepath.Base(p), ".json")
		for _, u := range rec.Users {
			if !live[u] {
				if err := h.release(key, u); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}

	// Mount points under StateDir with no record.
	known := map[string]bool{}
	shareds, _ = filepath.Glob(filepath.Join(h.StateDir, "shared", "*.json"))
	for _, p := range shareds {
		known[strings.TrimSuffix(p, ".json")] = true
	}
	for id := range live {
		known[h.RootfsPath(id)] = true
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

// IsMounted reports whether the container's layers are completely mounted.
func (h *Host) IsMounted(id string) bool {
	if validID(id) != nil {
		return false
	}
	var rec containerRec
	if err := atomicfile.ReadJSON(h.containerPath(id), &rec); err != nil {
		return false
	}
	return rec.State == stateMounted
}
