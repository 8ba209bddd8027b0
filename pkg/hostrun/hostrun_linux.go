// Package hostrun runs a command with a container's root file system as its
// root, on the host, in new mount, PID, UTS and IPC namespaces (process
// isolation), confined the way runc's defaults confine a container: the OCI
// default capability set, no_new_privs, a /dev with only the standard
// nodes, masked and read-only /proc and /sys paths. It is the host half of
// `layervisor run` and runs containers in the utility VM's agent too; it is
// not a full container runtime (no cgroups, seccomp or user namespace).
package hostrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// InitArg is the first argument of the re-executed helper that sets up the
// namespaces from inside. Programs that use Run must call MaybeInit first
// thing in main (and in TestMain).
const InitArg = "__layervisor-hostrun-init"

// ExitCommandNotFound is the exit code when the command does not exist in
// the root file system, as shells use.
const ExitCommandNotFound = 127

// Options describe the process.
type Options struct {
	Rootfs string
	Args   []string
	Env    []string // default: a minimal PATH/HOME/TERM
	Cwd    string   // inside the rootfs; default "/"
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Hostname inside the UTS namespace; default "layervisor".
	Hostname string
	// Capabilities of the command, as an OCI spec's process.capabilities;
	// nil means DefaultCapabilities().
	Capabilities *specs.LinuxCapabilities
	// Mounts are host paths bound into the root file system, in order,
	// before the command starts (visible only to it).
	Mounts []Mount
	// noPivot makes the helper move the root and chroot, as it must on an
	// initramfs root, so that tests can reach that path on the host.
	noPivot bool
}

// initConfig is what a Helper receives: the command and how to confine it.
type initConfig struct {
	Rootfs   string   `json:"rootfs"`
	Args     []string `json:"args"`
	Env      []string `json:"env"`
	Cwd      string   `json:"cwd"`
	Hostname string   `json:"hostname"`
	Caps     capMasks `json:"caps"`
	NoPivot  bool     `json:"noPivot,omitempty"`
	Mounts   []Mount  `json:"mounts,omitempty"`
}

// Run runs the command in a fresh Helper and returns its exit code. A
// cancelled ctx kills it. Bad options are refused by Helper.Run, which
// ends the helper.
func Run(ctx context.Context, o Options) (int, error) {
	h, err := StartHelper()
	if err != nil {
		return 0, err
	}
	return h.Run(ctx, o)
}

func (o Options) check() error {
	if len(o.Args) == 0 {
		return errors.New("hostrun: no command given")
	}
	if st, err := os.Stat(o.Rootfs); err != nil || !st.IsDir() {
		return fmt.Errorf("hostrun: root file system %q is not a directory", o.Rootfs)
	}
	return nil
}

// config fills in the defaults.
func (o Options) config() (initConfig, error) {
	c := initConfig{Rootfs: o.Rootfs, Args: o.Args, Env: o.Env, Cwd: o.Cwd, Hostname: o.Hostname, NoPivot: o.noPivot, Mounts: o.Mounts}
	if c.Env == nil {
		c.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=xterm"}
	}
	if c.Cwd == "" {
		c.Cwd = "/"
	}
	if c.Hostname == "" {
		c.Hostname = "layervisor"
	}
	caps := o.Capabilities
	if caps == nil {
		caps = DefaultCapabilities()
	}
	var err error
	c.Caps, err = parseCaps(caps)
	return c, err
}

// FileStdin turns a reader into an *os.File for a child's stdin, so that
// exec.Cmd.Wait does not wait for the reader to reach EOF (an interactive
// stream may never end). close releases it once the child has exited.
func FileStdin(r io.Reader) (*os.File, func(), error) {
	if r == nil {
		return nil, func() {}, nil
	}
	if f, ok := r.(*os.File); ok {
		return f, func() {}, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	go func() {
		io.Copy(pw, r)
		pw.Close()
	}()
	return pr, func() { pr.Close(); pw.Close() }, nil
}

// MaybeInit runs the namespace helper if this process was started as one;
// it never returns then. Otherwise it returns at once.
func MaybeInit() {
	if len(os.Args) != 2 || os.Args[1] != InitArg {
		return
	}
	// The mount namespace, capabilities and no_new_privs belong to a
	// thread, not the process: set them on the thread that calls execve.
	runtime.LockOSThread()
	c, err := receive()
	if err != nil {
		fmt.Fprintf(os.Stderr, "layervisor: helper: %v\n", err)
		os.Exit(126)
	}
	if c == nil {
		os.Exit(0) // closed unused
	}
	// A mount namespace of our own, made now rather than when the helper
	// was started: mounts made since (the container's root) are in it.
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		fmt.Fprintf(os.Stderr, "layervisor: helper: new mount namespace: %v\n", err)
		os.Exit(126)
	}
	args := c.Args
	if err := setupRoot(*c); err != nil {
		fmt.Fprintf(os.Stderr, "layervisor: set up container root %s: %v\n", c.Rootfs, err)
		os.Exit(126)
	}
	if err := unix.Chdir(c.Cwd); err != nil {
		fmt.Fprintf(os.Stderr, "layervisor: working directory %s: %v\n", c.Cwd, err)
		os.Exit(126)
	}
	path, err := lookPath(args[0], envPath(c.Env))
	if err != nil {
		fmt.Fprintf(os.Stderr, "layervisor: %s: command not found in the container\n", args[0])
		os.Exit(ExitCommandNotFound)
	}
	// Last, once nothing needs privileges any more.
	if err := c.Caps.apply(); err != nil {
		fmt.Fprintf(os.Stderr, "layervisor: %v\n", err)
		os.Exit(126)
	}
	err = unix.Exec(path, args, c.Env)
	fmt.Fprintf(os.Stderr, "layervisor: exec %s: %v\n", args[0], err)
	if errors.Is(err, unix.ENOENT) {
		os.Exit(ExitCommandNotFound)
	}
	os.Exit(126)
}

// envPath is PATH in env.
func envPath(env []string) string {
	path := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	return path
}

// setupRoot makes the rootfs the root of this (new) mount namespace with its
// own /proc, a read-only /sys and a minimal /dev, masks what containers
// must not see, and sets the hostname.
func setupRoot(c initConfig) error {
	rootfs := c.Rootfs
	// Nothing we mount may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		if errors.Is(err, unix.EINVAL) {
			// The kernel refuses when / is not a mount point: a plain chroot.
			return fmt.Errorf("make mounts private: %w (is / a mount point? in a chroot, bind-mount its directory onto itself first)", err)
		}
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount(rootfs, rootfs, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind rootfs: %w", err)
	}
	// CAP_MKNOD is in the default set and there is no device cgroup: device
	// nodes must work only where we bind them, so nothing else honours them.
	if err := unix.MountSetattr(unix.AT_FDCWD, rootfs, unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NODEV}); err != nil {
		return fmt.Errorf("make rootfs nodev: %w", err)
	}
	if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	if err := mountIn(rootfs, "proc", "proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	// A fresh sysfs (it shows the host's network devices: there is no
	// network namespace), read-only like runc's.
	if err := mountIn(rootfs, "sys", "sysfs", "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := setupDev(rootfs); err != nil {
		return err
	}
	if err := mountIn(rootfs, "tmp", "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		// A root without /tmp is fine.
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := bindMounts(rootfs, c.Mounts); err != nil {
		return err
	}
	if err := enterRoot(rootfs, c.NoPivot); err != nil {
		return err
	}
	return maskPaths()
}

// enterRoot makes rootfs the process's root: pivot_root with the old root
// stacked on the new one, then detached; or, where pivot_root is refused
// (an initramfs root, as in the utility VM's agent), move the rootfs over
// "/" and chroot into it. The move matters: CAP_SYS_CHROOT is in the
// default set, and a plain chroot is escaped with a second chroot, while
// a ".." out of a mount on "/" comes back to that mount.
func enterRoot(rootfs string, noPivot bool) error {
	if err := unix.Chdir(rootfs); err != nil {
		return err
	}
	if !noPivot {
		err := unix.PivotRoot(".", ".")
		if err == nil {
			if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
				return fmt.Errorf("detach old root: %w", err)
			}
			return unix.Chdir("/")
		}
		if !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("pivot_root: %w", err)
		}
	}
	if err := unix.Mount(rootfs, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move rootfs to /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

func mountIn(rootfs, dir, source, fstype string, flags uintptr, data string) error {
	target := filepath.Join(rootfs, dir)
	st, err := os.Lstat(target)
	if errors.Is(err, os.ErrNotExist) {
		if dir == "tmp" {
			return err
		}
		if err := os.Mkdir(target, 0o755); err != nil {
			return fmt.Errorf("create /%s: %w", dir, err)
		}
	} else if err != nil {
		return err
	} else if !st.IsDir() {
		return fmt.Errorf("/%s in the container is not a directory", dir)
	}
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount /%s: %w", dir, err)
	}
	return nil
}

// lookPath resolves a command name against the command's PATH inside the
// new root.
func lookPath(name, path string) (string, error) {
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err != nil {
			return "", err
		}
		return name, nil
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", os.ErrNotExist
}
