package hostrun

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// devNodes are the device nodes a container's /dev holds (runc's default
// devices), bind-mounted from the host's /dev: the only nodes that work.
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// maskedPaths are hidden from the container (containerd's default list):
// a file under /dev/null, a directory under an empty read-only tmpfs.
var maskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
	"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
	"/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
}

// readonlyPaths are made read-only (containerd's default list).
var readonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}

// setupDev mounts a fresh /dev in the rootfs: the standard nodes, a private
// devpts instance, /dev/shm, /dev/mqueue (for the IPC namespace) and the
// usual links. The tmpfs is nodev, so a node made with mknod there is dead.
func setupDev(rootfs string) error {
	const noExec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := mountIn(rootfs, "dev", "tmpfs", "tmpfs", noExec, "mode=755,size=64k"); err != nil {
		return err
	}
	dev := filepath.Join(rootfs, "dev")
	for _, name := range devNodes {
		target := filepath.Join(dev, name)
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o666)
		if err != nil {
			return fmt.Errorf("/dev/%s: %w", name, err)
		}
		f.Close()
		if err := unix.Mount("/dev/"+name, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", name, err)
		}
	}
	for _, m := range []struct {
		dir, fstype string
		flags       uintptr
		data        string
	}{
		// newinstance: the container's ptys are its own, not the host's.
		{"pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{"shm", "tmpfs", noExec, "mode=1777,size=65536k"},
		{"mqueue", "mqueue", noExec, ""},
	} {
		target := filepath.Join(dev, m.dir)
		if err := os.Mkdir(target, 0o755); err != nil {
			return fmt.Errorf("create /dev/%s: %w", m.dir, err)
		}
		if err := unix.Mount(m.fstype, target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mount /dev/%s: %w", m.dir, err)
		}
	}
	for _, l := range [][2]string{
		{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"},
		{"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
	} {
		if err := os.Symlink(l[0], filepath.Join(dev, l[1])); err != nil {
			return fmt.Errorf("/dev/%s: %w", l[1], err)
		}
	}
	return nil
}

// maskPaths hides maskedPaths and makes readonlyPaths read-only. It runs
// inside the new root, where /proc and /sys are the container's own; paths
// the kernel does not have are skipped.
func maskPaths() error {
	for _, p := range maskedPaths {
		st, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
		if st.IsDir() {
			err = unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=555")
		} else {
			err = unix.Mount("/dev/null", p, "", unix.MS_BIND, "")
		}
		if err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
	}
	for _, p := range readonlyPaths {
		err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, "")
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bind %s: %w", p, err)
		}
		if err := unix.MountSetattr(unix.AT_FDCWD, p, unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("make %s read-only: %w", p, err)
		}
	}
	return nil
}

// apply gives the calling thread these capabilities and no_new_privs; the
// caller must exec on the same (locked) thread. As root, execve makes the
// new permitted and effective sets bounding|inheritable, clamped by
// no_new_privs to the permitted set we set here: the bounding set is what
// really confines the command.
func (m capMasks) apply() error {
	// Capabilities past the kernel's last one cannot be kept: ignore them,
	// as runc does.
	var known uint64
	for c := 0; c < 64; c++ {
		if _, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err != nil {
			break
		}
		known |= 1 << c
	}
	for c := 0; c < 64; c++ {
		if known&(1<<c) == 0 || m.Bounding&(1<<c) != 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	for i := range data {
		shift := 32 * i
		data[i].Effective = uint32((m.Effective & known) >> shift)
		data[i].Permitted = uint32((m.Permitted & known) >> shift)
		data[i].Inheritable = uint32((m.Inheritable & known) >> shift)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set capabilities (effective %#x, permitted %#x, inheritable %#x): %w", m.Effective, m.Permitted, m.Inheritable, err)
	}
	for c := 0; c < 64; c++ {
		if m.Ambient&known&(1<<c) == 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c), 0, 0); err != nil {
			return fmt.Errorf("raise ambient capability %d: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return nil
}
