// Package share shares host directories (and single files) into a utility
// VM with virtiofs — the Linux counterpart of Windows' VSMB — and mounts them
// in the guest, reference-counted by (host path, read-only).
//
// The Controller is a state machine over Host (serve and hot-plug a
// directory under a tag; unplug it and stop serving) and Guest (mount the
// tag; unmount it). Each share moves through attaching → attached →
// detaching; callers for the same key wait for an in-flight transition.
//
// Read-only: virtiofsd 7.2 (/usr/lib/qemu/virtiofsd) has no read-only
// option, so read-only is enforced by the guest's read-only mount. A
// read-only and a read-write share of one path are two shares (two
// daemons, two tags).
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
	"errors"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/layervisor/layervisor/internal/hostpath"
	"github.com/layervisor/layervisor/internal/inflight"
	"github.com/layervisor/layervisor/pkg/undo"
)

// GuestMountRoot is the guest directory under which shares are mounted.
const GuestMountRoot = "/run/mounts/share"

// ErrAlreadyReleased means Release was called twice on one Share.
var ErrAlreadyReleased = errors.New("share already released")

// Host is what the VMM side must do.
type Host interface {
	// AddShare serves hostDir under tag and hot-plugs it. On failure it
	// leaves nothing behind (no device, no daemon).
	AddShare(ctx context.Context, tag, hostDir string) error
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

type state int

const (
	attaching state = iota
	attached
	detaching
)

type share struct {
	key      key
	tag      string
	guestDir string // mount point in the guest
	file     string // base name when a single file is shared
	exposed  *exposedFile
	refs     int
	state    state
	op       *inflight.Op // the transition in flight (or the last one)
}

// Controller manages the shares of one VM. Safe for concurrent use.
type Controller struct {
	host     Host
	guest    Guest
	stateDir string

	mu     sync.Mutex
	byKey  map[key]*share
	next   int
	active int
}

// New returns a controller. stateDir (the UVM's state directory, or a
// directory under it) holds the private directories of single-file shares.
func New(host Host, guest Guest, stateDir string) *Controller {
	return &Controller{host: host, guest: guest, stateDir: stateDir, byKey: map[key]*share{}}
}

// Share is one reference to a shared path. Release it exactly once.
type Share struct {
	s        *share
	c        *Controller
	released atomic.Bool
}

// GuestPath is the shared directory, or the shared file, in the guest.
func (s *Share) GuestPath() string {
	if s.s.file != "" {
		return path.Join(s.s.guestDir, s.s.file)
	}
	return s.s.guestDir
}

// GuestDir is where the share's tag is mounted in the guest.
func (s *Share) GuestDir() string { return s.s.guestDir }

// Tag is the virtiofs tag.
func (s *Share) Tag() string { return s.s.tag }

// HostPath is the shared path with symlinks resolved.
func (s *Share) HostPath() string { return s.s.key.path }

// ReadOnly reports whether the guest mount is read-only.
func (s *Share) ReadOnly() bool { return s.s.key.readOnly }

// Attach shares hostPath (a directory, or a single file) into the VM and
// mounts it in the guest, or adds a reference to an existing share of the
// same path with the same read-only setting.
func (c *Controller) Attach(ctx context.Context, hostPath string, readOnly bool) (*Share, error) {
	resolved, isDir, err := resolve(hostPath)
	if err != nil {
		return nil, fmt.Errorf("share attach: %w", err)
	}
	k := key{resolved, readOnly}
	c.mu.Lock()
	for {
		s := c.byKey[k]
		if s == nil {
			break
		}
		if s.state == attached {
			s.refs++
			c.mu.Unlock()
			return &Share{s: s, c: c}, nil
		}
		o, wasAttaching := s.op, s.state == attaching
		c.mu.Unlock()
		if err := o.Wait(ctx); err != nil {
			return nil, fmt.Errorf("share attach %s: %w", hostPath, err)
		}
		if wasAttaching && o.Err() != nil {
			return nil, fmt.Errorf("share attach %s: concurrent attach failed: %w", hostPath, o.Err())
		}
		c.mu.Lock()
	}
	n := c.next
	c.next++
	s := &share{key: k, tag: fmt.Sprintf("s%d", n), guestDir: fmt.Sprintf("%s/s%d", GuestMountRoot, n),
		refs: 1, state: attaching, op: inflight.New()}
	if !isDir {
		s.file = filepath.Base(resolved)
	}
	c.byKey[k] = s
	c.active++
	c.mu.Unlock()

	err = c.attach(ctx, s, n)

	c.mu.Lock()
	if err != nil {
		delete(c.byKey, k)
		c.active--
	} else {
		s.state = attached
	}
	s.op.Finish(err)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	slog.Debug("share attached", "path", resolved, "ro", readOnly, "tag", s.tag, "guest", s.guestDir)
	return &Share{s: s, c: c}, nil
}

func (c *Controller) attach(ctx context.Context, s *share, n int) (err error) {
	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	dir := s.key.path
	if s.file != "" {
		e, err := exposeFile(filepath.Join(c.stateDir, "files", fmt.Sprintf("f%d", n)), s.key.path)
		if err != nil {
			return fmt.Errorf("share attach %s: expose the single file: %w", s.key.path, err)
		}
		u.Push("remove private dir", func(context.Context) error { return e.remove() })
		s.exposed = e
		dir = e.dir
	}
	if err := c.host.AddShare(ctx, s.tag, dir); err != nil {
		return fmt.Errorf("share attach %s as %s: %w", s.key.path, s.tag, err)
	}
	u.Push("remove share "+s.tag, func(ctx context.Context) error { return c.host.RemoveShare(ctx, s.tag) })
	if err := c.guest.MountVirtiofs(ctx, s.tag, s.key.readOnly, s.guestDir); err != nil {
		return fmt.Errorf("share attach %s: mount tag %s at %s in the guest: %w", s.key.path, s.tag, s.guestDir, err)
	}
	u.Commit()
	return nil
}

// Release drops this reference. The last one unmounts in the guest, unplugs
// the share and stops its daemon, and removes a single file's private
// directory; every step is attempted and the errors are joined.
func (s *Share) Release(ctx context.Context) error {
	if !s.released.CompareAndSwap(false, true) {
		return fmt.Errorf("%s: %w", s.s.key.path, ErrAlreadyReleased)
	}
	c, sh := s.c, s.s
	c.mu.Lock()
	sh.refs--
	if sh.refs > 0 {
		c.mu.Unlock()
		return nil
	}
	sh.state = detaching
	sh.op = inflight.New()
	c.mu.Unlock()

	var errs []error
	if err := c.guest.Unmount(ctx, sh.guestDir); err != nil {
		errs = append(errs, fmt.Errorf("share release %s: unmount %s in the guest: %w", sh.key.path, sh.guestDir, err))
	}
	if err := c.host.RemoveShare(ctx, sh.tag); err != nil {
		errs = append(errs, fmt.Errorf("share release %s: remove %s: %w", sh.key.path, sh.tag, err))
	}
	if sh.exposed != nil {
		if err := sh.exposed.remove(); err != nil {
			errs = append(errs, fmt.Errorf("share release %s: %w", sh.key.path, err))
		}
	}
	err := errors.Join(errs...)
	c.mu.Lock()
	if c.byKey[sh.key] == sh {
		delete(c.byKey, sh.key)
	}
	c.active--
	sh.op.Finish(err)
	c.mu.Unlock()
	return err
}

// RefCount reports the references of the share of hostPath with readOnly.
func (c *Controller) RefCount(hostPath string, readOnly bool) int {
	resolved, _, err := resolve(hostPath)
	if err != nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.byKey[key{resolved, readOnly}]; s != nil && s.state == attached {
		return s.refs
	}
	return 0
}

// Active reports how many shares exist (attached or in transition).
func (c *Controller) Active() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active
}

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
