package uvm

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/layervisor/layervisor/internal/mountinfo"
)

// unmountUnder detaches every mount at or under dir, deepest first.
func unmountUnder(dir string) error {
	ms, err := mountinfo.Read()
	if err != nil {
		return err
	}
	var under []string
	for _, m := range ms {
		if m.Mountpoint == dir || strings.HasPrefix(m.Mountpoint, dir+"/") {
			under = append(under, m.Mountpoint)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(under)))
	for _, p := range under {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
			return fmt.Errorf("unmount %s: %w", p, err)
		}
	}
	return nil
}

// hostProcesses finds the QEMU and virtiofsd processes of UVMs under root.
// QEMU names its UVM directory on its command line (the QMP socket);
// virtiofsd does not, but writes its log there (stdout and stderr).
func hostProcesses(root string) []Process {
	prefix := filepath.Join(root, "uvms") + "/"
	uvmOf := func(p string) string {
		id, _, _ := strings.Cut(strings.TrimPrefix(p, prefix), "/")
		return id
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var out []Process
	for _, d := range procs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if strings.Contains(filepath.Base(args[0]), "virtiofsd") {
			for _, fd := range []string{"1", "2"} {
				if l, err := os.Readlink(d + "/fd/" + fd); err == nil && strings.HasPrefix(l, prefix) {
					out = append(out, Process{PID: pid, UVM: uvmOf(l), Kind: "virtiofsd"})
					break
				}
			}
			continue
		}
		for _, a := range args {
			// -qmp unix:<root>/uvms/<id>/qmp.sock,server=on,wait=off
			if sock, ok := strings.CutPrefix(a, "unix:"); ok && strings.HasPrefix(sock, prefix) && strings.Contains(sock, "/qmp.sock") {
				out = append(out, Process{PID: pid, UVM: uvmOf(sock), Kind: "qemu"})
				break
			}
		}
	}
	return out
}
