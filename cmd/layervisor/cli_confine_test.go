package main

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layervisor/layervisor/internal/containerdtest"
	"github.com/layervisor/layervisor/internal/imagebuild"
)

// confineImages writes three images over the same layers: "confine" (root,
// an Env, a WorkingDir and a Cmd), "appuser" (USER app) and "entry" (an
// Entrypoint and a Cmd). The layers hold busybox with the applets the
// checks use, accounts with a supplementary group, and /sti (TIOCSTI).
func confineImages(t *testing.T) map[string]string {
	t.Helper()
	base, err := imagebuild.BusyboxBase()
	if err != nil {
		t.Fatal(err)
	}
	sti := filepath.Join(t.TempDir(), "sti")
	cmd := exec.Command("go", "build", "-o", sti, "./testdata/sti")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build sti: %v %s", err, out)
	}
	stiBin, err := os.ReadFile(sti)
	if err != nil {
		t.Fatal(err)
	}
	stiEntry := imagebuild.File("sti", "", 0o755)
	stiEntry.Content, stiEntry.Header.Size = stiBin, int64(len(stiBin))
	extra := imagebuild.Layer{Compression: imagebuild.Gzip, Entries: []imagebuild.Entry{
		imagebuild.Dir("bin", 0o755), imagebuild.Dir("work", 0o755), imagebuild.Dir("mnt", 0o755), stiEntry,
		imagebuild.File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/work:/bin/sh\n", 0o644),
		imagebuild.File("etc/group", "root:x:0:\nstaff:x:50:app\napp:x:1000:\n", 0o644),
		// A device node a layer carries (the OCI layer spec allows it).
		imagebuild.Raw(tar.Header{Typeflag: tar.TypeChar, Name: "layer-mem", Devmajor: 1, Devminor: 1, Mode: 0o666, ModTime: time.Unix(0, 0)}), // /dev/mem
	}}
	for _, a := range []string{"tr", "insmod", "unshare", "seq", "tty", "touch", "pwd", "tail", "ls"} {
		extra.Entries = append(extra.Entries, imagebuild.Symlink("bin/"+a, "busybox"))
	}
	path := "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	configs := map[string]*ocispec.ImageConfig{
		"confine": {Env: []string{path, "GREETING=hello from the image"}, WorkingDir: "/work", Cmd: []string{"sh", "-c", "echo cmd ran in $(pwd)"}},
		"appuser": {Env: []string{path}, User: "app", Cmd: []string{"id"}},
		"entry":   {Env: []string{path}, Entrypoint: []string{"echo", "entrypoint"}, Cmd: []string{"and", "cmd"}},
	}
	dir := t.TempDir()
	out := map[string]string{}
	for name, cfg := range configs {
		p := filepath.Join(dir, name+".tar")
		im := imagebuild.Image{Name: name + ":latest", Layers: []imagebuild.Layer{base, extra}, Config: cfg}
		if err := im.Write(imagebuild.OCITar, p); err != nil {
			t.Fatal(err)
		}
		out[name] = p
	}
	return out
}

// confineRow is one check of the confinement table. Each row runs with
// containerd's `ctr run` (Debian's containerd 1.6 with runc, the
// reference) and with `layervisor run` in both isolation modes; the
// layervisor answers must equal the reference's, and every answer must
// pass check (which holds whatever the reference says, so a broken
// reference cannot pass the row either).
type confineRow struct {
	name   string
	image  string   // confine, appuser or entry
	flags  []string // layervisor run flags
	ctr    []string // ctr run flags; nil: ctr 1.6 has no such option (no reference)
	script string   // sh -c script; "" runs the image's own command
	check  func(out string, code int) string
	// vmDiffers says why the utility VM answers differently on purpose;
	// check alone decides there.
	vmDiffers string
}

func want(sub string, code int) func(string, int) string {
	return func(out string, c int) string {
		if c != code || !strings.Contains(out, sub) {
			return fmt.Sprintf("want exit %d and %q", code, sub)
		}
		return ""
	}
}

var confineTable = []confineRow{
	{name: "image Cmd, Env and WorkingDir", image: "confine", ctr: []string{}, check: want("cmd ran in /work", 0)},
	{name: "image Env", image: "confine", ctr: []string{}, script: `echo "$GREETING"`, check: want("hello from the image", 0)},
	{name: "image Entrypoint + Cmd", image: "entry", ctr: []string{}, check: want("entrypoint and cmd", 0)},
	{name: "image USER: uid, gid, supplementary groups", image: "appuser", ctr: []string{}, check: want("uid=1000(app) gid=1000(app) groups=", 0)},
	{name: "image USER: /proc groups", image: "appuser", ctr: []string{}, script: "grep -E '^(Uid|Gid|Groups):' /proc/self/status", check: want("Groups:\t50", 0)},
	{name: "-u name:group", image: "confine", flags: []string{"-u", "app:staff"}, script: "id -u; id -g", check: want("1000\n50", 0)},
	{name: "-u uid", image: "appuser", flags: []string{"-u", "0"}, script: "id -u", check: want("0", 0)},
	{name: "-w", image: "confine", flags: []string{"-w", "/tmp"}, ctr: []string{"--cwd", "/tmp"}, script: "pwd", check: want("/tmp", 0)},
	{name: "-e replaces the image's variable", image: "confine", flags: []string{"-e", "GREETING=flag"}, ctr: []string{"--env", "GREETING=flag"}, script: `echo "$GREETING"`, check: want("flag", 0)},
	{name: "CapEff default", image: "confine", ctr: []string{}, script: "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status", check: want("CapEff:\t00000000a80425fb", 0)},
	{name: "CapEff with --cap-add/--cap-drop", image: "confine", flags: []string{"--cap-add", "SYS_TIME", "--cap-drop", "NET_RAW"},
		ctr: []string{"--cap-add", "CAP_SYS_TIME", "--cap-drop", "CAP_NET_RAW"}, script: "grep -E '^Cap(Eff|Bnd):' /proc/self/status", check: want("CapEff:\t00000000aa0405fb", 0)},
	{name: "capabilities: non-root has none", image: "appuser", ctr: []string{}, script: "grep CapEff /proc/self/status", check: want("CapEff:\t0000000000000000", 0)},
	{name: "seccomp on by default", image: "confine", ctr: []string{"--seccomp"}, script: "grep '^Seccomp:' /proc/self/status", check: want("Seccomp:\t2", 0)},
	{name: "seccomp refuses unshare --user", image: "confine", ctr: []string{"--seccomp"}, script: "unshare --user true 2>&1; echo rc=$?", check: want("rc=1", 0)},
	{name: "seccomp=unconfined", image: "confine", flags: []string{"--security-opt", "seccomp=unconfined"}, ctr: []string{}, script: "grep '^Seccomp:' /proc/self/status; unshare --user true; echo rc=$?", check: want("Seccomp:\t0\nrc=0", 0)},
	{name: "no_new_privs", image: "confine", ctr: []string{}, script: "grep NoNewPrivs /proc/self/status", check: want("NoNewPrivs:\t1", 0)},
	{name: "masked /proc/kcore", image: "confine", ctr: []string{}, script: "head -c 16 /proc/kcore | wc -c", check: want("0", 0)},
	{name: "masked /sys/firmware", image: "confine", ctr: []string{}, script: "ls -A /sys/firmware | wc -l", check: want("0", 0)},
	{name: "read-only /proc/sys", image: "confine", ctr: []string{}, script: "echo x 2>/dev/null >/proc/sys/kernel/hostname; echo rc=$?", check: want("rc=1", 0)},
	{name: "cgroup file system read-only (no escape through release_agent or a new cgroup)", image: "confine", ctr: []string{},
		script: "mkdir /sys/fs/cgroup/escape 2>/dev/null; echo mkdir=$?; cat /proc/1/cgroup >/dev/null; echo x 2>/dev/null > /sys/fs/cgroup/cgroup.procs; echo write=$?",
		check:  want("mkdir=1\nwrite=1", 0)},
	{name: "own PID namespace: PID 1 is the container's", image: "confine", ctr: []string{}, script: "cat /proc/1/comm; true", check: want("sh", 0)},
	{name: "read-only /sys", image: "confine", ctr: []string{}, script: "touch /sys/x 2>/dev/null; echo rc=$?", check: want("rc=1", 0)},
	{name: "mount refused", image: "confine", ctr: []string{}, script: "mount -t tmpfs none /mnt 2>/dev/null; echo rc=$?", check: want("rc=1", 0)},
	{name: "--read-only root", image: "confine", flags: []string{"--read-only"}, ctr: []string{"--read-only"}, script: "touch /x 2>/dev/null; echo rc=$?; touch /tmp/y 2>/dev/null; echo tmp=$?", check: want("rc=1", 0)},
	{name: "/dev holds the standard nodes", image: "confine", ctr: []string{}, script: "ls /dev | tr '\\n' ' '", check: want("null", 0),
		vmDiffers: "crun (the guest's runtime) also links /dev/core to /proc/kcore, which stays masked"},
	{name: "a device node from a layer does not open (/dev/mem)", image: "confine", ctr: []string{}, script: "head -c 1 /layer-mem >/dev/null 2>&1; echo rc=$?", check: want("rc=1", 0)},
	{name: "network namespace: only lo", image: "confine", ctr: []string{}, script: "ls /sys/class/net", check: want("lo", 0)},
	{name: "--network host", image: "confine", flags: []string{"--network", "host"}, ctr: []string{"--net-host"}, script: "ls /sys/class/net | wc -l",
		check:     func(out string, code int) string { return "" },
		vmDiffers: "the guest's own network: the utility VM has no NIC, so only lo"},
	{name: "--hostname", image: "confine", flags: []string{"--hostname", "box"}, script: "hostname", check: want("box", 0)},
	{name: "--memory: a memory hog is OOM-killed", image: "confine", flags: []string{"--memory", "32m"}, ctr: []string{"--memory-limit", "33554432"},
		script: "head -c 100m /dev/zero | tail", check: want("", 137)},
	{name: "--pids-limit stops a fork bomb", image: "confine", flags: []string{"--pids-limit", "20"},
		script: "for i in $(seq 40); do sleep 3 & done 2>&1 | head -1", check: want("can't fork", 0)},
	{name: "--cpus", image: "confine", flags: []string{"--cpus", "0.5"}, ctr: []string{"--cpus", "0.5"}, script: "echo ok", check: want("ok", 0)},
	{name: "exit code", image: "confine", ctr: []string{}, script: "exit 3", check: want("", 3)},
	{name: "the agent's channel is out of reach (no virtio-serial port to forge its frames on)", image: "confine", ctr: []string{},
		// sysfs shows the port's numbers; a node made from them must not open either.
		script: "ls /dev | grep -c -E 'vport|hvc'; d=$(cat /sys/class/virtio-ports/*/dev 2>/dev/null | head -1); " +
			"if [ -n \"$d\" ]; then mknod /tmp/vp c ${d%:*} ${d#*:} 2>/dev/null; head -c 1 /tmp/vp </dev/null >/dev/null 2>&1; else head -c 1 /dev/vport0p1 >/dev/null 2>&1; fi; echo open=$?",
		check: want("0\nopen=1", 0)},
	{name: "no terminal without -t", image: "confine", ctr: []string{}, script: "test -t 0; echo stdin-tty=$?; cat /dev/tty 2>&1 | head -1", check: want("stdin-tty=1", 0)},
}

// The confinement table, in both modes, against ctr run (runc, Debian's
// containerd 1.6) on the same images.
func TestConfinementTable(t *testing.T) {
	c := vmCLI(t)
	imgs := confineImages(t)
	for name, p := range imgs {
		if _, errs, code := c.run("image", "import", "--name", name+":latest", p); code != 0 {
			t.Fatalf("import %s: %s", name, errs)
		}
	}
	ctx := context.Background()
	d, err := containerdtest.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	for name, p := range imgs {
		if err := d.Import(ctx, p); err != nil {
			t.Fatal(err)
		}
		_ = name
	}
	refs, err := d.Ctr(ctx, "images", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	ref := func(name string) string {
		for _, r := range strings.Fields(refs) {
			if strings.Contains(r, "/"+name+":latest") || strings.HasPrefix(r, name+":latest") {
				return r
			}
		}
		t.Fatalf("image %s not in containerd: %s", name, refs)
		return ""
	}
	passed := map[string]int{}
	for i, r := range confineTable {
		t.Run(r.name, func(t *testing.T) {
			var cmd []string
			if r.script != "" {
				cmd = []string{"sh", "-c", r.script}
			}
			var refOut string
			refCode := -1
			if r.ctr != nil {
				args := append([]string{"run", "--rm"}, r.ctr...)
				args = append(append(args, ref(r.image), fmt.Sprintf("confine-%d", i)), cmd...)
				out, err := d.Ctr(ctx, args...)
				refOut, refCode = strings.TrimSpace(out), 0
				if ee, ok := errorsAsExit(err); ok {
					refCode = ee
				} else if err != nil {
					t.Fatalf("ctr: %v", err)
				}
				if msg := r.check(refOut, refCode); msg != "" {
					t.Errorf("reference (ctr): exit %d, output %q (%v): %s", refCode, refOut, err, msg)
				}
			}
			for _, mode := range []string{"process", "vm"} {
				args := append([]string{"run", "--isolation", mode}, r.flags...)
				args = append(args, r.image+":latest")
				if cmd != nil {
					args = append(append(args, "--"), cmd...)
				}
				out, errs, code := c.run(args...)
				out = strings.TrimSpace(out)
				if msg := r.check(out, code); msg != "" {
					t.Errorf("%s: exit %d, output %q (stderr %q): %s", mode, code, out, errs, msg)
					continue
				}
				if r.ctr != nil && !(mode == "vm" && r.vmDiffers != "") && (out != refOut || code != refCode) {
					t.Errorf("%s: exit %d, output %q; the reference: exit %d, output %q", mode, code, out, refCode, refOut)
					continue
				}
				passed[mode]++
			}
		})
	}
	t.Logf("confinement table: %d rows; process passed %d, vm passed %d", len(confineTable), passed["process"], passed["vm"])
}

// errorsAsExit returns the exit code of a ctr that ran and exited non-zero.
func errorsAsExit(err error) (int, bool) {
	for e := err; e != nil; {
		if ee, ok := e.(*exec.ExitError); ok {
			return ee.ExitCode(), true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return 0, false
		}
		e = u.Unwrap()
	}
	return 0, false
}
