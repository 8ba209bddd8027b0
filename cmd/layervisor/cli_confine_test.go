package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/pkg/imagebuild"
)

// confineScript prints what a container may do; confinement is the same
// on the host and in the utility VM's agent.
const confineScript = `grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -d '\t'
echo dev: $(ls /dev)
echo kcore: $(head -c 16 /proc/kcore 2>/dev/null | wc -c)
mount -t tmpfs none /tmp 2>/dev/null || echo mount: refused
echo x 2>/dev/null >/proc/sys/kernel/hostname || echo sysctl: refused
echo insmod: $(insmod /bin/busybox 2>&1)
`

// confineImage is busybox plus the applets confineScript needs.
func confineImage(t *testing.T) string {
	t.Helper()
	base, err := imagebuild.BusyboxBase()
	if err != nil {
		t.Fatal(err)
	}
	extra := imagebuild.Layer{Compression: imagebuild.Gzip, Entries: []imagebuild.Entry{
		imagebuild.Dir("bin", 0o755), imagebuild.Symlink("bin/insmod", "busybox"), imagebuild.Symlink("bin/tr", "busybox"),
	}}
	out := filepath.Join(t.TempDir(), "confine.tar")
	if err := (imagebuild.Image{Name: "confine:latest", Layers: []imagebuild.Layer{base, extra}}).Write(imagebuild.OCITar, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkConfined checks confineScript's output. modules says whether the
// kernel loads modules at all (without, insmod fails whatever the
// capabilities).
func checkConfined(t *testing.T, where, out string, modules bool) {
	t.Helper()
	// CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
	// NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
	const def = "00000000a80425fb"
	want := []string{
		"CapInh:0000000000000000", "CapPrm:" + def, "CapEff:" + def, "CapBnd:" + def, "CapAmb:0000000000000000",
		"NoNewPrivs:1",
		"dev: fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero",
		"kcore: 0", "mount: refused", "sysctl: refused",
	}
	got := strings.Split(strings.TrimSpace(out), "\n")
	if len(got) != len(want)+1 {
		t.Fatalf("%s: output %q", where, out)
	}
	for i, w := range want {
		if got[i] != w {
			t.Errorf("%s: %q, want %q", where, got[i], w)
		}
	}
	wantInsmod := "Operation not permitted"
	if !modules {
		wantInsmod = "kernel does not support" // busybox's words for ENOSYS
	}
	if !strings.HasPrefix(got[len(want)], "insmod: ") || !strings.Contains(got[len(want)], wantInsmod) {
		t.Errorf("%s: %q, want an insmod error %q", where, got[len(want)], wantInsmod)
	}
}

// run --isolation process and --isolation vm confine the command alike.
func TestCLIRunConfined(t *testing.T) {
	c := vmCLI(t)
	img := confineImage(t)
	out, errs, code := c.run("run", "--isolation", "process", img, "--", "sh", "-c", confineScript)
	if code != 0 {
		t.Fatalf("process: exit %d, stderr %s", code, errs)
	}
	_, err := os.Stat("/proc/modules")
	checkConfined(t, "process", out, err == nil)
	// The guest kernel loads its drivers as modules.
	out, errs, code = c.run("run", "--isolation", "vm", "confine:latest", "--", "sh", "-c", confineScript)
	if code != 0 {
		t.Fatalf("vm: exit %d, stderr %s", code, errs)
	}
	checkConfined(t, "vm", out, true)
}
