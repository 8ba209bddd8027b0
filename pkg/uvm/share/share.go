// Package share shares host directories (and single files) into a utility
// VM with virtiofs — the Linux counterpart of Windows' VSMB — and mounts them
// in the guest, reference-counted by (host path, read-only).
//
// The Controller is a thin layer over internal/refcount (reference counts,
// in-flight transitions, retryable release) calling Host (serve and
// hot-plug a directory under a tag; unplug it and stop serving) and Guest
// (mount the tag; unmount it). The last Release unmounts in the guest, then
// unplugs; when a step fails the reference is kept and a later Release
// retries from that step (a share still mounted is never unplugged).
//
// Read-only is enforced on the host: the guest is untrusted and may remount
// its side read-write. QEMUHost serves a read-only bind mount of the
// directory (writes fail with EROFS in the host kernel): the C virtiofsd
// 7.2 has no read-only option, and the Rust one's --readonly (passed too
// where it has it) is the daemon's own check only. The guest's read-only
// mount is only a courtesy. A read-only and a read-write share of one path
// are two shares (two daemons, two tags).
//
// The daemon is the Rust virtiofsd where installed, else QEMU's C one (see
// DefaultVirtiofsd); either runs sandboxed (see flavour.args).
//
// Single files: sharing a file's directory would expose its siblings, so a
// file is exposed through a private directory under the controller's state
// directory that holds only that file — as a hard link (same inode, so
// reads and writes are the file's own), or, when a hard link is impossible
// (another file system, or not permitted), a bind mount of the file onto an
// empty placeholder (Linux). The guest path of such a share is the file
// inside the mounted directory.
package share

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"
	"sync"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/internal/hostpath"
	"github.com/layervisor/layervisor/internal/refcount"
	"github.com/layervisor/layervisor/internal/undo"
)

// ErrAlreadyReleased means Release was called again after it succeeded.
var ErrAlreadyReleased = refcount.ErrAlreadyReleased

// Host is what the VMM side must do.
type Host interface {
	// AddShare serves hostDir under tag and hot-plugs it; with readOnly
	// the host refuses every write, whatever the guest does. On failure it
	// leaves nothing behind (no device, no daemon).
	AddShare(ctx context.Context, tag, hostDir string, readOnly bool) error
	// RemoveShare unplugs tag and stops serving it.
	RemoveShare(ctx context.Context, tag string) error
}

// Guest is what the guest agent must do.
type Guest interface {
	MountVirtiofs(ctx context.Context, tag string, readOnly bool, guestPath string) error
	Unmount(ctx context.Context, guestPath string) error
}

type key struct {
	path     string // resolved
	readOnly bool
}

// share is the table's value. Its fields are fixed at attach, except
// hostGone, which only the table's hooks touch (one at a time per key).
type share struct {
	tag      string
	guestDir string // mount point in the guest
	hostDir  string // what the host serves: the path, or a single file's private dir
	file     string // base name when a single file is shared
	exposed  *exposedFile
	hostGone bool // RemoveShare succeeded; the private dir is still to remove
}

// Controller manages the shares of one VM. Safe for concurrent use.
type Controller struct {
	host     Host
	guest    Guest
	stateDir string
	shares   *refcount.Table[key, struct{}, *share]

	mu   sync.Mutex
	next int
}

// New returns a controller. stateDir (the UVM's state directory, or a
// directory under it) holds the private directories of single-file shares.
func New(host Host, guest Guest, stateDir string) *Controller {
	c := &Controller{host: host, guest: guest, stateDir: stateDir}
	c.shares = refcount.New(refcount.Hooks[key, struct{}, *share]{
		Attach: c.attach, Mount: c.mount, Unmount: c.unmount, Remove: c.remove,
	})
	return c
}

// Share is one reference to a shared path. Release it until Release
// succeeds.
type Share struct {
	r *refcount.Ref[key, struct{}, *share]
}

// GuestPath is the shared directory, or the shared file, in the guest.
func (s *Share) GuestPath() string {
	sh := s.r.Value()
	if sh.file != "" {
		return path.Join(sh.guestDir, sh.file)
	}
	return sh.guestDir
}

// GuestDir is where the share's tag is mounted in the guest.
func (s *Share) GuestDir() string { return s.r.Value().guestDir }

// Tag is the virtiofs tag.
func (s *Share) Tag() string { return s.r.Value().tag }

// HostPath is the shared path with symlinks resolved.
func (s *Share) HostPath() string { return s.r.Key().path }

// ReadOnly reports whether the guest mount is read-only.
func (s *Share) ReadOnly() bool { return s.r.Key().readOnly }

// Attach shares hostPath (a directory, or a single file) into the VM and
// mounts it in the guest, or adds a reference to an existing share of the
// same path with the same read-only setting.
func (c *Controller) Attach(ctx context.Context, hostPath string, readOnly bool) (*Share, error) {
	resolved, _, err := resolve(hostPath)
	if err != nil {
		return nil, fmt.Errorf("share attach: %w", err)
	}
	r, err := c.shares.Attach(ctx, key{resolved, readOnly}, struct{}{})
	if err != nil {
		return nil, fmt.Errorf("share attach %s: %w", hostPath, err)
	}
	return &Share{r: r}, nil
}

// attach is the table's Attach hook: expose a single file, serve and plug,
// mount in the guest; undone on failure.
func (c *Controller) attach(ctx context.Context, k key, _ struct{}) (_ *share, err error) {
	_, isDir, err := resolve(k.path)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	n := c.next
	c.next++
	c.mu.Unlock()
	s := &share{tag: fmt.Sprintf("s%d", n), guestDir: guestpath.ShareMount(n), hostDir: k.path}

	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	if !isDir {
		e, err := exposeFile(filepath.Join(c.stateDir, "files", fmt.Sprintf("f%d", n)), k.path)
		if err != nil {
			return nil, fmt.Errorf("expose the single file: %w", err)
		}
		u.Push("remove private dir", func(context.Context) error { return e.remove() })
		s.file, s.exposed, s.hostDir = filepath.Base(k.path), e, e.dir
	}
	if err := c.host.AddShare(ctx, s.tag, s.hostDir, k.readOnly); err != nil {
		return nil, fmt.Errorf("add as %s: %w", s.tag, err)
	}
	u.Push("remove share "+s.tag, func(ctx context.Context) error { return c.host.RemoveShare(ctx, s.tag) })
	if err := c.guest.MountVirtiofs(ctx, s.tag, k.readOnly, s.guestDir); err != nil {
		return nil, fmt.Errorf("mount tag %s at %s in the guest: %w", s.tag, s.guestDir, err)
	}
	u.Commit()
	slog.Debug("share attached", "path", k.path, "ro", k.readOnly, "tag", s.tag, "guest", s.guestDir)
	return s, nil
}

// mount is the table's Mount hook, after a release that unmounted but did
// not finish removing: plug the share again if it was unplugged, mount it.
func (c *Controller) mount(ctx context.Context, k key, s *share) (*share, error) {
	if s.hostGone {
		if err := c.host.AddShare(ctx, s.tag, s.hostDir, k.readOnly); err != nil {
			return nil, fmt.Errorf("add as %s: %w", s.tag, err)
		}
		s.hostGone = false
	}
	if err := c.guest.MountVirtiofs(ctx, s.tag, k.readOnly, s.guestDir); err != nil {
		return nil, fmt.Errorf("mount tag %s at %s in the guest: %w", s.tag, s.guestDir, err)
	}
	return s, nil
}

func (c *Controller) unmount(ctx context.Context, _ key, s *share) error {
	if err := c.guest.Unmount(ctx, s.guestDir); err != nil {
		return fmt.Errorf("unmount %s in the guest: %w", s.guestDir, err)
	}
	return nil
}

// remove unplugs the share and stops its daemon, then removes a single
// file's private directory; a retry skips what already succeeded.
func (c *Controller) remove(ctx context.Context, _ key, s *share) error {
	if !s.hostGone {
		if err := c.host.RemoveShare(ctx, s.tag); err != nil {
			return fmt.Errorf("remove %s: %w", s.tag, err)
		}
		s.hostGone = true
	}
	if s.exposed != nil {
		if err := s.exposed.remove(); err != nil {
			return err
		}
	}
	return nil
}

// Release drops this reference. The last one unmounts in the guest, then
// unplugs the share, stops its daemon and removes a single file's private
// directory. When a step fails the reference is kept and the error
// returned; calling Release again retries from the failed step.
func (s *Share) Release(ctx context.Context) error {
	if err := s.r.Release(ctx); err != nil {
		return fmt.Errorf("share release %s: %w", s.r.Key().path, err)
	}
	return nil
}

// RefCount reports the references of the share of hostPath with readOnly.
func (c *Controller) RefCount(hostPath string, readOnly bool) int {
	resolved, _, err := resolve(hostPath)
	if err != nil {
		return 0
	}
	return c.shares.RefCount(key{resolved, readOnly})
}

// Active reports how many shares exist (attached or in transition).
func (c *Controller) Active() int { return c.shares.Len() }

// resolve is hostpath.Resolve for a share: a directory, or a regular file
// that is exposed on its own.
func resolve(hostPath string) (resolved string, isDir bool, err error) {
	resolved, fi, err := hostpath.Resolve(hostPath)
	if err != nil {
		return "", false, err
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return "", false, fmt.Errorf("host path %q is neither a directory nor a regular file", hostPath)
	}
	return resolved, fi.IsDir(), nil
}
