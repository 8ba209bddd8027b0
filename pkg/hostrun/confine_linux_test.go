package hostrun

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/loop"
)

// statusFields returns the fields of a /proc/PID/status listing.
func statusFields(t *testing.T, status string) map[string]string {
	t.Helper()
	f := map[string]string{}
	for _, line := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			f[k] = strings.TrimSpace(v)
		}
	}
	if f["CapBnd"] == "" {
		t.Fatalf("no capabilities in status %q", status)
	}
	return f
}

func capHex(t *testing.T, names ...string) string {
	t.Helper()
	m, err := parseCaps(&specs.LinuxCapabilities{Bounding: names})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%016x", m.Bounding)
}

// The command has exactly the default capabilities and no_new_privs, with
// pivot_root and with the move+chroot an initramfs root needs.
func TestDefaultCapabilities(t *testing.T) {
	root := busyboxRoot(t)
	want := capHex(t, defaultCaps...)
	for _, noPivot := range []bool{false, true} {
		t.Run(fmt.Sprintf("noPivot=%v", noPivot), func(t *testing.T) {
			var out, errb bytes.Buffer
			code, err := Run(context.Background(), Options{Rootfs: root, Args: []string{"cat", "/proc/self/status"}, Stdout: &out, Stderr: &errb, noPivot: noPivot})
			if err != nil || code != 0 {
				t.Fatalf("exit %d, err %v, stderr %s", code, err, errb.String())
			}
			f := statusFields(t, out.String())
			for k, v := range map[string]string{"CapBnd": want, "CapPrm": want, "CapEff": want, "CapInh": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1"} {
				if f[k] != v {
					t.Errorf("%s: %s, want %s", k, f[k], v)
				}
			}
		})
	}
}

// A caller's OCI capabilities replace the default; unknown names are
// refused before anything runs.
func TestCapabilitiesFromOptions(t *testing.T) {
	root := busyboxRoot(t)
	var out, errb bytes.Buffer
	caps := &specs.LinuxCapabilities{
		Bounding:  []string{"CAP_KILL", "CAP_CHOWN"},
		Effective: []string{"CAP_KILL"},
		Permitted: []string{"CAP_KILL"},
	}
	code, err := Run(context.Background(), Options{Rootfs: root, Args: []string{"cat", "/proc/self/status"}, Stdout: &out, Stderr: &errb, Capabilities: caps})
	if err != nil || code != 0 {
		t.Fatalf("exit %d, err %v, stderr %s", code, err, errb.String())
	}
	f := statusFields(t, out.String())
	// execve as root grants the bounding set; no_new_privs clamps it to
	// what was permitted before.
	kill := capHex(t, "CAP_KILL")
	for k, v := range map[string]string{"CapBnd": capHex(t, "CAP_KILL", "CAP_CHOWN"), "CapPrm": kill, "CapEff": kill, "CapInh": "0000000000000000"} {
		if f[k] != v {
			t.Errorf("%s: %s, want %s", k, f[k], v)
		}
	}

	out.Reset()
	_, err = Run(context.Background(), Options{Rootfs: root, Args: []string{"echo", "ran"}, Stdout: &out,
		Capabilities: &specs.LinuxCapabilities{Bounding: []string{"CAP_KILL", "CAP_BOGUS"}}})
	if err == nil || !strings.Contains(err.Error(), "CAP_BOGUS") || out.Len() != 0 {
		t.Fatalf("unknown capability: err %v, output %q", err, out.String())
	}
}

// A read-only bind mount in the root cannot be made writable from inside.
func TestReadOnlyBindMountStaysReadOnly(t *testing.T) {
	root := busyboxRoot(t)
	// Its own tmpfs, so that a remount of the super block touches nothing else.
	src := t.TempDir()
	if err := unix.Mount("tmpfs", src, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(src, unix.MNT_DETACH) })
	os.WriteFile(filepath.Join(src, "file"), []byte("content\n"), 0o644)
	data := filepath.Join(root, "data")
	os.Mkdir(data, 0o755)
	if err := unix.Mount(src, data, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(data, unix.MNT_DETACH) })
	if err := unix.Mount("", data, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, root, "sh", "-c", "mount -o remount,rw /data && echo remounted; mount -o remount,bind,rw /data && echo bind-remounted; echo x > /data/new && echo wrote; cat /data/file")
	if code != 0 || out != "content\n" {
		t.Fatalf("exit %d, output %q (stderr %q)", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(src, "new")); err == nil {
		t.Fatal("the container wrote through a read-only bind mount")
	}
}

// /dev holds only the standard nodes; a host disk's node made with mknod
// (CAP_MKNOD is a default capability) cannot be opened anywhere, and
// nothing can be mounted.
func TestNoHostDevices(t *testing.T) {
	root := busyboxRoot(t)
	disk := hostDisk(t)
	script := fmt.Sprintf(`echo $(ls /dev)
for d in / /tmp /dev; do
	mknod $d/blk b %s || echo "mknod in $d failed"
	head -c 512 $d/blk >/dev/null && echo "read the disk through $d"
done
mount -t tmpfs none /tmp && echo mounted
exit 0`, disk)
	code, out, errs := run(t, root, "sh", "-c", script)
	want := "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero\n"
	if code != 0 || out != want {
		t.Fatalf("exit %d, output %q, want %q (stderr %q)", code, out, want, errs)
	}
}

// hostDisk attaches a real loop device to a file of data and returns its
// "major minor".
func hostDisk(t *testing.T) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, bytes.Repeat([]byte("host data"), 1<<16), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := loop.Attach(img, loop.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() }) // autoclear detaches it
	var st unix.Stat_t
	if err := unix.Stat(d.Path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d %d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
}

// The masked /proc and /sys paths read empty, the read-only ones are
// read-only, and so is /sys.
func TestProcAndSysConfined(t *testing.T) {
	root := busyboxRoot(t)
	var script strings.Builder
	checked := 0
	for _, p := range maskedPaths {
		st, err := os.Stat(p)
		if err != nil {
			continue
		}
		if st.IsDir() {
			fmt.Fprintf(&script, "echo %s $(ls -A %s | wc -l)\n", p, p)
		} else {
			fmt.Fprintf(&script, "echo %s $(cat %s | wc -c)\n", p, p)
		}
		checked++
	}
	if data, _ := os.ReadFile("/proc/interrupts"); checked == 0 || len(data) == 0 {
		t.Fatalf("nothing to check: %d masked paths exist on this host", checked)
	}
	script.WriteString("echo changed > /proc/sys/kernel/hostname && echo hostname-written\n")
	script.WriteString("echo ---; cat /proc/self/mountinfo\n")
	code, out, errs := run(t, root, "sh", "-c", script.String())
	masked, mountinfo, _ := strings.Cut(out, "---\n")
	if code != 0 || mountinfo == "" {
		t.Fatalf("exit %d, output %q (stderr %q)", code, out, errs)
	}
	for _, line := range strings.Split(strings.TrimSpace(masked), "\n") {
		if !strings.HasSuffix(line, " 0") {
			t.Errorf("not masked: %s", line)
		}
	}
	ro := map[string]bool{}
	for _, line := range strings.Split(mountinfo, "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ...
		if f := strings.Fields(line); len(f) > 5 {
			ro[f[4]] = strings.HasPrefix(f[5], "ro")
		}
	}
	for _, p := range append([]string{"/sys"}, readonlyPaths...) {
		if _, err := os.Stat(p); err != nil {
			continue // this kernel has no such file
		}
		if !ro[p] {
			t.Errorf("%s is not a read-only mount in the container", p)
		}
	}
}

// CAP_SYS_CHROOT is a default capability: the classic escape (chroot into
// a subdirectory, walk up past the root, chroot there) must not reach the
// host's files, neither after pivot_root nor on the move+chroot path.
func TestChrootEscape(t *testing.T) {
	root := busyboxRoot(t)
	goBin := testutil.NeedTool(t, "go")
	src := filepath.Join(t.TempDir(), "escape.go")
	os.WriteFile(src, []byte(escapeProgram), 0o644)
	cmd := exec.Command(goBin, "build", "-o", filepath.Join(root, "bin", "escape"), src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the escape program: %v %s", err, out)
	}
	hostPath := filepath.Join(root, "marker") // the host's path of a file in the root
	for _, noPivot := range []bool{false, true} {
		t.Run(fmt.Sprintf("noPivot=%v", noPivot), func(t *testing.T) {
			var out, errb bytes.Buffer
			code, err := Run(context.Background(), Options{Rootfs: root, Args: []string{"escape", hostPath}, Stdout: &out, Stderr: &errb, noPivot: noPivot})
			if err != nil || code != 0 || out.String() != "confined\n" {
				t.Fatalf("exit %d, err %v, output %q, stderr %q", code, err, out.String(), errb.String())
			}
		})
	}
}

const escapeProgram = `package main

import (
	"fmt"
	"os"
	"syscall"
)

func main() {
	os.Mkdir("/escape-dir", 0o755)
	if err := syscall.Chroot("/escape-dir"); err != nil {
		fmt.Println("chroot:", err)
		os.Exit(1)
	}
	for i := 0; i < 64; i++ {
		syscall.Chdir("..")
	}
	if err := syscall.Chroot("."); err != nil {
		fmt.Println("chroot .:", err)
		os.Exit(1)
	}
	if _, err := os.Stat(os.Args[1]); err == nil {
		fmt.Println("escaped")
		return
	}
	fmt.Println("confined")
}
`
