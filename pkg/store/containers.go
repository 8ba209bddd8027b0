package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/crashpoint"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/scratch"
)

// Container is a container's storage record.
type Container struct {
	Name     string          `json:"name"`
	Image    string          `json:"image"`
	ChainIDs []digest.Digest `json:"chainIDs"` // base layer first
	// ScratchSize is the virtual size of the container's own scratch; zero
	// when it shares another container's scratch.
	ScratchSize int64 `json:"scratchSize,omitempty"`
	// ScratchFormat is raw (loop-mountable ext4, the default) or vhdx.
	ScratchFormat scratch.Format `json:"scratchFormat,omitempty"`
	// SharesScratchOf names the container whose scratch this one uses.
	SharesScratchOf string    `json:"sharesScratchOf,omitempty"`
	Created         time.Time `json:"created"`
}

// ContainerOptions tune CreateContainer.
type ContainerOptions struct {
	ScratchSize int64 // default scratch.DefaultSize
	// ScratchFormat is scratch.Raw (default) or scratch.VHDX; a VHDX
	// scratch can be used by utility VMs only.
	ScratchFormat scratch.Format
	// ShareScratchWith makes the new container's scratch a symlink to that
	// container's scratch, as the containers of a pod share their sandbox's.
	ShareScratchWith string
}

// ContainerStatus adds run-time state to the record.
type ContainerStatus struct {
	Container
	Mounted bool   `json:"mounted"`
	Rootfs  string `json:"rootfs,omitempty"`
}

func (s *Store) containerDir(name string) string {
	return filepath.Join(s.root, "containers", name)
}
func (s *Store) containerRecPath(name string) string {
	return filepath.Join(s.containerDir(name), "container.json")
}

// Host is the one owner of the store's host mounts (package layers):
// containers' root file systems, and every layer image mounted on the host,
// whoever uses it — containers mounted here and the containerd
// snapshotter's snapshots alike — with its state and recovery under
// mounts/.
func (s *Store) Host() *layers.Host { return &layers.Host{StateDir: filepath.Join(s.root, "mounts")} }

// CreateContainer records a container of the image and gives it a scratch
// cloned from the template of its size.
func (s *Store) CreateContainer(ctx context.Context, name, image string, opts ContainerOptions) (*Container, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	size := opts.ScratchSize
	if size == 0 {
		size = scratch.DefaultSize
	}
	format, err := scratch.ParseFormat(string(opts.ScratchFormat))
	if err != nil {
		return nil, err
	}
	var tpl string
	if opts.ShareScratchWith == "" {
		// Formatting a template can take a moment: do it outside the lock.
		if tpl, err = scratch.EnsureTemplateFormat(ctx, s.root, size, format); err != nil {
			return nil, err
		}
	}
	lk, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer lk.Release()
	im, err := s.Image(image)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(s.containerDir(name)); err == nil {
		return nil, fmt.Errorf("container name %q is already taken: %w", name, ErrExists)
	}
	c := &Container{Name: name, Image: image, ChainIDs: im.ChainIDs, Created: time.Now().UTC()}
	// Build in a temp dir and rename: a crash leaves no half container.
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "container-"+name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if opts.ShareScratchWith != "" {
		other, err := s.container(opts.ShareScratchWith)
		if err != nil {
			return nil, fmt.Errorf("share scratch with %q: %w", opts.ShareScratchWith, err)
		}
		if other.SharesScratchOf != "" {
			other, err = s.container(other.SharesScratchOf)
			if err != nil {
				return nil, err
			}
		}
		c.SharesScratchOf = other.Name
		img, err := layers.ScratchImage(s.containerDir(other.Name))
		if err != nil {
			return nil, err
		}
		target := filepath.Join(s.containerDir(other.Name), filepath.Base(img))
		if err := os.Symlink(target, filepath.Join(tmp, filepath.Base(img))); err != nil {
			return nil, err
		}
	} else {
		c.ScratchSize, c.ScratchFormat = size, format
		name := layers.ScratchFile
		if format == scratch.VHDX {
			name = layers.ScratchVHDX
		}
		if err := scratch.Clone(ctx, tpl, filepath.Join(tmp, name)); err != nil {
			return nil, err
		}
	}
	crashpoint.Hit("create.scratch-cloned")
	// Publish flushes the record and the scratch clone with the directory.
	if err := atomicfile.WriteJSON(filepath.Join(tmp, "container.json"), c, false); err != nil {
		return nil, err
	}
	if err := atomicfile.Publish(tmp, s.containerDir(name)); err != nil {
		return nil, fmt.Errorf("create container %q: %w", name, err)
	}
	return c, nil
}

func (s *Store) container(name string) (*Container, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	var c Container
	if err := atomicfile.ReadJSON(s.containerRecPath(name), &c); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("container %q: %w", name, ErrNotFound)
		}
		return nil, err
	}
	return &c, nil
}

// Container returns a container's record and mount state.
func (s *Store) Container(name string) (*ContainerStatus, error) {
	c, err := s.container(name)
	if err != nil {
		return nil, err
	}
	return s.status(c), nil
}

func (s *Store) status(c *Container) *ContainerStatus {
	st := &ContainerStatus{Container: *c}
	if s.Host().IsMounted(c.Name) {
		st.Mounted = true
		st.Rootfs = s.Host().RootfsPath(c.Name)
	}
	return st
}

// Containers lists containers sorted by name.
func (s *Store) Containers() ([]ContainerStatus, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "containers"))
	if err != nil {
		return nil, err
	}
	var out []ContainerStatus
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		c, err := s.container(e.Name())
		if errors.Is(err, ErrNotFound) {
			continue // being removed, or a leftover for gc
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *s.status(c))
	}
	slices.SortFunc(out, func(a, b ContainerStatus) int {
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

// LayerFolders returns the container's layer folders in hcsshim order:
// top-most read-only layer first, base layer, then the scratch folder.
func (s *Store) LayerFolders(name string) ([]string, error) {
	c, err := s.container(name)
	if err != nil {
		return nil, err
	}
	var out []string
	for i := len(c.ChainIDs) - 1; i >= 0; i-- {
		dir := s.LayerDir(c.ChainIDs[i])
		if _, err := os.Stat(filepath.Join(dir, layers.LayerFile)); err != nil {
			return nil, fmt.Errorf("container %q: layer %s missing from the store: %w", name, c.ChainIDs[i], err)
		}
		out = append(out, dir)
	}
	return append(out, s.containerDir(name)), nil
}

// Mount mounts the container's root file system on the host and returns
// its path.
func (s *Store) Mount(ctx context.Context, name string) (string, error) {
	folders, err := s.LayerFolders(name)
	if err != nil {
		return "", err
	}
	l, err := layers.FromFolders(folders)
	if err != nil {
		return "", err
	}
	return s.Host().Mount(ctx, name, l)
}

// Unmount unmounts the container's root file system on the host.
func (s *Store) Unmount(ctx context.Context, name string) error {
	if _, err := s.container(name); err != nil {
		return err
	}
	return s.Host().Unmount(ctx, name, layers.UnmountAll)
}

// RemoveContainer unmounts (if mounted) and deletes a container and its
// scratch. It refuses while other containers share its scratch.
func (s *Store) RemoveContainer(ctx context.Context, name string) error {
	c, err := s.container(name)
	if err != nil {
		return err
	}
	// Lock order: store, then host mounts (Mount never takes them the
	// other way round).
	lk, err := s.lock()
	if err != nil {
		return err
	}
	defer lk.Release()
	cs, err := s.Containers()
	if err != nil {
		return err
	}
	for _, o := range cs {
		if o.SharesScratchOf == c.Name {
			return fmt.Errorf("container %q: its scratch is shared by container %q: %w", name, o.Name, ErrInUse)
		}
	}
	if s.Host().IsMounted(name) {
		if err := s.Host().Unmount(ctx, name, layers.UnmountAll); err != nil {
			return fmt.Errorf("remove container %q: %w", name, err)
		}
	}
	// Rename first so the removal is atomic for readers.
	doomed := filepath.Join(s.root, "tmp", "rm-"+name+"-"+fmt.Sprint(time.Now().UnixNano()))
	if err := os.Rename(s.containerDir(name), doomed); err != nil {
		return fmt.Errorf("remove container %q: %w", name, err)
	}
	return os.RemoveAll(doomed)
}
