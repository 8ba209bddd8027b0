// Package hostrun runs a command with a container's root file system as its
// root, on the host, in new mount, PID, UTS and IPC namespaces (process
// isolation). It is the host half of `layervisor run`; it is not a full
// container runtime (no cgroups, seccomp, capabilities or user namespace).
package hostrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

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
}

// Run runs the command and returns its exit code. A cancelled ctx kills it.
func Run(ctx context.Context, o Options) (int, error) {
	if len(o.Args) == 0 {
		return 0, errors.New("hostrun: no command given")
	}
	if st, err := os.Stat(o.Rootfs); err != nil || !st.IsDir() {
		return 0, fmt.Errorf("hostrun: root file system %q is not a directory", o.Rootfs)
	}
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("hostrun: %w", err)
	}
	env := o.Env
	if env == nil {
		env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=xterm"}
	}
	cwd := o.Cwd
	if cwd == "" {
		cwd = "/"
	}
	host := o.Hostname
	if host == "" {
		host = "layervisor"
	}
	cmd := exec.Command(self, append([]string{InitArg, o.Rootfs, cwd, host, "--"}, o.Args...)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = o.Stdout, o.Stderr
	// Output copying may outlive the command (a daemon it left holding
	// stdout): bound it.
	cmd.WaitDelay = 2 * time.Second
	stdin, closeStdin, err := FileStdin(o.Stdin)
	if err != nil {
		return 0, err
	}
	defer closeStdin()
	cmd.Stdin = stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("hostrun: start: %w", err)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(3 * time.Second):
				cmd.Process.Kill()
			}
		case <-done:
		}
	}()
	err = cmd.Wait()
	close(done)
	if errors.Is(err, exec.ErrWaitDelay) {
		err = nil
		if !cmd.ProcessState.Success() {
			err = &exec.ExitError{ProcessState: cmd.ProcessState}
		}
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), ctx.Err()
		}
		return ee.ExitCode(), ctx.Err()
	}
	if err != nil {
		return 0, fmt.Errorf("hostrun: %w", err)
	}
	return 0, ctx.Err()
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
	if len(os.Args) < 6 || os.Args[1] != InitArg || os.Args[5] != "--" {
		return
	}
	rootfs, cwd, host, args := os.Args[2], os.Args[3], os.Args[4], os.Args[6:]
	if err := setupRoot(rootfs, host); err != nil {
		fmt.Fprintf(os.Stderr, "layervisor: set up container root %s: %v\n", rootfs, err)
		os.Exit(126)
	}
	if err := unix.Chdir(cwd); err != nil {
		fmt.Fprintf(os.Stderr, "layervisor: working directory %s: %v\n", cwd, err)
		os.Exit(126)
	}
	path, err := lookPath(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "layervisor: %s: command not found in the container\n", args[0])
		os.Exit(ExitCommandNotFound)
	}
	err = unix.Exec(path, args, os.Environ())
	fmt.Fprintf(os.Stderr, "layervisor: exec %s: %v\n", args[0], err)
	if errors.Is(err, unix.ENOENT) {
		os.Exit(ExitCommandNotFound)
	}
	os.Exit(126)
}

// setupRoot makes rootfs the root of this (new) mount namespace with its
// own /proc and a minimal /dev.
func setupRoot(rootfs, host string) error {
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
	if err := unix.Sethostname([]byte(host)); err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	if err := mountIn(rootfs, "proc", "proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := mountIn(rootfs, "dev", "tmpfs", "tmpfs", unix.MS_NOSUID, "mode=755,size=64k"); err != nil {
		return err
	}
	for _, dev := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		target := filepath.Join(rootfs, "dev", dev)
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o666)
		if err != nil {
			return fmt.Errorf("/dev/%s: %w", dev, err)
		}
		f.Close()
		if err := unix.Mount("/dev/"+dev, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", dev, err)
		}
	}
	for _, l := range [][2]string{{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}} {
		os.Symlink(l[0], filepath.Join(rootfs, "dev", l[1]))
	}
	if err := mountIn(rootfs, "tmp", "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		// A root without /tmp is fine.
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	// pivot_root with the old root stacked on the new one, then detach it.
	if err := unix.Chdir(rootfs); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		// An initramfs root (a utility VM's agent) cannot be pivoted
		// away from; chroot in the private mount namespace instead.
		if !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("pivot_root: %w", err)
		}
		if err := unix.Chroot("."); err != nil {
			return fmt.Errorf("chroot: %w", err)
		}
		return unix.Chdir("/")
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach old root: %w", err)
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

// lookPath resolves a command name against PATH inside the new root.
func lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err != nil {
			return "", err
		}
		return name, nil
	}
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", os.ErrNotExist
}
