//go:build linux

// Command layervisor-agent is the guest agent of a layervisor utility VM:
// PID 1 of its initramfs. It mounts the basic file systems, loads the
// kernel modules the host's attachments need, and serves the host over a
// virtio-serial port until told to power off.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/agent/guest"
)

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "layervisor-agent runs as PID 1 of a layervisor utility VM")
		os.Exit(2)
	}
	if err := boot(); err != nil {
		fatal(err)
	}
	port, err := openPort()
	if err != nil {
		fatal(err)
	}
	fmt.Println("layervisor-agent: ready")
	s := &guest.Server{Poweroff: poweroff}
	for {
		// The port outlives host connections; Serve returns on a read
		// error, which is transient. With no host connected the port reads
		// EOF at once: that is the normal state of a long-lived UVM between
		// two commands, so it is not logged (a console line costs a TCG
		// guest ~1 ms a character) and the port is tried again soon.
		err := s.Serve(context.Background(), port)
		if !errors.Is(err, io.EOF) {
			slog.Warn("agent channel", "err", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "layervisor-agent:", err)
	poweroff()
}

func poweroff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	os.Exit(1)
}

func boot() error {
	for _, m := range []struct{ src, dst, fs, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", ""},
		{"tmpfs", "/run", "tmpfs", "mode=755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
		// The OCI runtime puts each container in a cgroup of its own
		// (limits, stats, freezing); v2 only, as in any recent distro.
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", "nsdelegate"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, 0, m.data); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	guest.PrepareCgroups()
	// Terminals for containers run with -t: a devpts instance, and
	// /dev/ptmx where devtmpfs has none.
	os.MkdirAll("/dev/pts", 0o755)
	if err := unix.Mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "ptmxmode=0666,mode=0620"); err != nil && err != unix.EBUSY {
		return fmt.Errorf("mount /dev/pts: %w", err)
	}
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		os.Symlink("pts/ptmx", "/dev/ptmx")
	}
	for _, d := range guestpath.AllowedRoots() {
		os.MkdirAll(d, 0o755)
	}
	return loadModules()
}

// loadModules loads each wanted module after its dependencies, using
// modules.dep from the initramfs; built-in modules are skipped.
func loadModules() error {
	var uts unix.Utsname
	unix.Uname(&uts)
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:]))
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil // a kernel with everything built in
	}
	defer f.Close()
	deps := map[string][]string{} // module name -> [its file, dependencies' files...]
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		file, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[modName(file)] = append([]string{file}, strings.Fields(rest)...)
	}
	loaded := map[string]bool{}
	var load func(file string)
	load = func(file string) {
		name := modName(file)
		if loaded[name] {
			return
		}
		loaded[name] = true
		if d, ok := deps[name]; ok {
			// modules.dep lists the deepest dependency last.
			for i := len(d) - 1; i >= 1; i-- {
				load(d[i])
			}
		}
		mf, err := os.Open(filepath.Join(dir, file))
		if err != nil {
			slog.Debug("module not in initramfs", "module", file)
			return
		}
		defer mf.Close()
		if err := unix.FinitModule(int(mf.Fd()), "", 0); err != nil && err != unix.EEXIST {
			slog.Warn("load module", "module", name, "err", err)
		}
	}
	for _, m := range agent.GuestModules {
		if d, ok := deps[m]; ok {
			load(d[0])
		}
	}
	return nil
}

func modName(file string) string {
	base := filepath.Base(file)
	base = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(base, ".xz"), ".zst"), ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

// openPort finds the virtio-serial port by name.
func openPort() (*os.File, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, n := range names {
			b, _ := os.ReadFile(n)
			if strings.TrimSpace(string(b)) == agent.PortName {
				dev := "/dev/" + filepath.Base(filepath.Dir(n))
				return os.OpenFile(dev, os.O_RDWR, 0)
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("virtio-serial port %q not found", agent.PortName)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
