package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCLIImportMountLifecycle(t *testing.T) {
	c := newCLI(t)
	img := demoImage(t, "docker-tar")
	out := c.ok("image", "import", "--name", "demo:1", img)
	if !strings.Contains(out, "demo:1") {
		t.Fatalf("import output %q", out)
	}
	// Idempotent: a second import converts nothing.
	var res struct {
		Converted, Reused int
	}
	if err := json.Unmarshal([]byte(c.ok("image", "import", "--json", "--name", "demo:1", img)), &res); err != nil {
		t.Fatal(err)
	}
	if res.Converted != 0 || res.Reused == 0 {
		t.Fatalf("re-import converted %d, reused %d", res.Converted, res.Reused)
	}
	var ims []struct {
		Name     string
		ChainIDs []string
	}
	json.Unmarshal([]byte(c.ok("image", "ls", "--json")), &ims)
	if len(ims) != 1 || ims[0].Name != "demo:1" || len(ims[0].ChainIDs) < 3 {
		t.Fatalf("image ls: %+v", ims)
	}
	// Every layer image passes e2fsck.
	for _, id := range ims[0].ChainIDs {
		p := filepath.Join(c.root, "layers", strings.TrimPrefix(id, "sha256:"), "layer.vhd")
		e2fsck(t, p)
	}

	c.ok("container", "create", "c1", "--image", "demo:1", "--scratch-size", "64M")
	c.ok("container", "create", "c2", "--image", "demo:1", "--scratch-size", "64M")
	c.fail("already taken", "container", "create", "c1", "--image", "demo:1")
	r1 := strings.TrimSpace(c.ok("container", "mount", "c1"))
	r2 := strings.TrimSpace(c.ok("container", "mount", "c2"))
	if strings.Contains(r1, "\n") || !filepath.IsAbs(r1) {
		t.Fatalf("mount printed more than the rootfs path: %q", r1)
	}
	checkDemoTree(t, r1)
	os.WriteFile(filepath.Join(r1, "written"), []byte("c1"), 0o644)
	if _, err := os.Stat(filepath.Join(r2, "written")); err == nil {
		t.Fatal("write in c1 visible in c2")
	}
	c.fail("used by container", "image", "rm", "demo:1")
	// Removing c1 leaves c2 intact.
	c.ok("container", "rm", "c1")
	checkDemoTree(t, r2)
	c.fail("not found", "container", "unmount", "c1x")
	c.ok("container", "unmount", "c2")
	c.fail("not mounted", "container", "unmount", "c2")
	c.ok("container", "rm", "c2")
	c.ok("image", "rm", "demo:1")
	var gc struct {
		Store struct{ RemovedLayers []string }
	}
	json.Unmarshal([]byte(c.ok("gc", "--json")), &gc)
	if len(gc.Store.RemovedLayers) != len(ims[0].ChainIDs) {
		t.Fatalf("gc removed %d layers, want %d", len(gc.Store.RemovedLayers), len(ims[0].ChainIDs))
	}
	if out := c.ok("layer", "ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("layers left: %s", out)
	}
}

func TestCLIImportFormats(t *testing.T) {
	c := newCLI(t)
	for _, format := range []string{"oci-dir", "oci-tar", "docker-tar"} {
		img := demoImage(t, format)
		c.ok("image", "import", "--name", "demo-"+format, img)
	}
	var ls []struct{ Images []string }
	json.Unmarshal([]byte(c.ok("layer", "ls", "--json")), &ls)
	for _, l := range ls {
		if len(l.Images) != 3 {
			t.Fatalf("the three formats of one image should share every layer: %+v", ls)
		}
	}
}

func TestCLIBadRoot(t *testing.T) {
	c := newCLI(t)
	ro := filepath.Join(t.TempDir(), "ro")
	os.MkdirAll(ro, 0o755)
	mustRun(t, "mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro)
	defer mustRun(t, "umount", ro)
	c.root = filepath.Join(ro, "root")
	c.fail(c.root, "image", "ls")

	full := filepath.Join(t.TempDir(), "full")
	os.MkdirAll(full, 0o755)
	mustRun(t, "mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", full)
	defer mustRun(t, "umount", full)
	c.root = filepath.Join(full, "root")
	img := demoImage(t, "oci-tar")
	_, errs, code := c.run("image", "import", img)
	if code == 0 || !strings.Contains(errs, "no space") {
		t.Fatalf("import into a full root: exit %d, %s", code, errs)
	}
	if ents, _ := os.ReadDir(filepath.Join(c.root, "tmp")); len(ents) != 0 {
		t.Fatalf("full root left temp entries: %v", ents)
	}
	if ents, _ := os.ReadDir(filepath.Join(c.root, "layers")); len(ents) > 1 { // .locks only
		t.Fatalf("full root left layers: %v", ents)
	}
}

// Crash tests: the process is killed (SIGKILL) at a named point; gc must
// leave no leaked mount, loop device, temp file or half-written layer, and a
// container mounted before the crash must stay usable.
func TestCLICrashRecovery(t *testing.T) {
	points := []struct{ point, op string }{
		{"import.layer-converted", "import"},
		{"import.layer-published", "import"},
		{"create.scratch-cloned", "create"},
		{"mount.intent-written", "mount"},
		{"mount.layer-mounted", "mount"},
		{"mount.overlay-mounted", "mount"},
		{"unmount.overlay-unmounted", "unmount"},
	}
	img := demoImage(t, "oci-tar")
	for _, p := range points {
		t.Run(p.point, func(t *testing.T) {
			c := newCLI(t)
			// A survivor sharing the layers, mounted before the crash.
			c.ok("image", "import", "--name", "base", busyboxImage(t))
			c.ok("container", "create", "survivor", "--image", "base", "--scratch-size", "64M")
			survivor := strings.TrimSpace(c.ok("container", "mount", "survivor"))
			if p.op != "import" {
				c.ok("image", "import", "--name", "demo", img)
			}
			if p.op == "mount" || p.op == "unmount" {
				c.ok("container", "create", "victim", "--image", "demo", "--scratch-size", "64M")
			}
			if p.op == "unmount" {
				c.ok("container", "mount", "victim")
			}
			c.env = []string{"LAYERVISOR_CRASH_AT=" + p.point}
			var args []string
			switch p.op {
			case "import":
				args = []string{"image", "import", "--name", "demo", img}
			case "create":
				args = []string{"container", "create", "victim", "--image", "demo", "--scratch-size", "64M"}
			case "mount":
				args = []string{"container", "mount", "victim"}
			case "unmount":
				args = []string{"container", "unmount", "victim"}
			}
			if _, errs, code := c.run(args...); code != -1 {
				t.Fatalf("crash point %s not reached (exit %d): %s", p.point, code, errs)
			}
			c.env = nil
			c.ok("gc")
			// The survivor is untouched.
			if _, err := os.Stat(filepath.Join(survivor, "bin", "busybox")); err != nil {
				t.Fatalf("survivor broken after crash + gc: %v", err)
			}
			// The interrupted operation can be done again from scratch.
			switch p.op {
			case "import":
				c.ok(args...)
			case "create":
				c.ok(args...)
			case "mount", "unmount":
				c.run("container", "unmount", "victim") // may or may not be mounted now
				checkDemoTree(t, strings.TrimSpace(c.ok("container", "mount", "victim")))
				c.ok("container", "unmount", "victim")
			}
			c.run("container", "rm", "victim")
			c.ok("container", "rm", "survivor")
			c.ok("gc")
		})
	}
}

func TestCLIUsageErrors(t *testing.T) {
	c := newCLI(t)
	c.fail(`required flag(s) "image" not set`, "container", "create", "x") // cobra's wording
	c.fail("invalid container name", "container", "create", "../x", "--image", "y")
	c.fail("not found", "container", "create", "x", "--image", "nope")
	c.fail("invalid size", "container", "create", "x", "--image", "nope", "--scratch-size", "lots")
	c.fail("neither an imported image nor a path", "run", "nope", "--", "true")
	missing := filepath.Join(t.TempDir(), "missing.tar")
	c.fail(missing, "image", "import", missing)
	c.fail("not found", "image", "rm", "nope")
}

func TestCLISharedScratch(t *testing.T) {
	c := newCLI(t)
	c.ok("image", "import", "--name", "demo", demoImage(t, "oci-dir"))
	c.ok("container", "create", "sandbox", "--image", "demo", "--scratch-size", "64M")
	c.ok("container", "create", "member", "--image", "demo", "--share-scratch-with", "sandbox")
	c.fail("not found", "container", "create", "x", "--image", "demo", "--share-scratch-with", "nobody")
	link, err := os.Readlink(filepath.Join(c.root, "containers", "member", "sandbox.img"))
	if err != nil || !strings.HasSuffix(link, filepath.Join("sandbox", "sandbox.img")) {
		t.Fatalf("member scratch is not a link to the sandbox's: %q %v", link, err)
	}
	rs := strings.TrimSpace(c.ok("container", "mount", "sandbox"))
	rm := strings.TrimSpace(c.ok("container", "mount", "member"))
	os.WriteFile(filepath.Join(rm, "member-file"), []byte("m"), 0o644)
	if _, err := os.Stat(filepath.Join(rs, "member-file")); err == nil {
		t.Fatal("containers sharing a scratch share their changes")
	}
	// One scratch device for both.
	var n int
	out, _ := exec.Command("sh", "-c", "grep -c "+filepath.Join(c.root, "containers", "sandbox", "sandbox.img")+" /sys/block/loop*/loop/backing_file | awk -F: '{s+=$2} END {print s}'").Output()
	fmt.Sscan(string(out), &n)
	if n != 1 {
		t.Fatalf("shared scratch attached %d times", n)
	}
	c.fail("shared by container", "container", "rm", "sandbox")
	if _, err := os.Stat(filepath.Join(rs, "bin", "sh")); err != nil {
		t.Fatalf("refused rm still unmounted the sandbox: %v", err)
	}
	c.ok("container", "rm", "member")
	c.ok("container", "rm", "sandbox")
}

// A VHDX scratch cannot be loop-mounted: the host path refuses it before
// touching anything, and run refuses it for process isolation.
func TestCLIVHDXScratchOnHost(t *testing.T) {
	c := newCLI(t)
	c.ok("image", "import", demoImage(t, "oci-dir"), "--name", "demo")
	c.ok("container", "create", "v", "--image", "demo", "--scratch-size", "64M", "--scratch-format", "vhdx")
	if _, err := os.Stat(filepath.Join(c.root, "containers", "v", "sandbox.vhdx")); err != nil {
		t.Fatalf("no VHDX scratch: %v", err)
	}
	c.fail("VHDX scratch", "container", "mount", "v")
	c.fail("needs --isolation vm", "run", "--scratch-format", "vhdx", "demo", "--", "true")
	c.fail("scratch format", "container", "create", "w", "--image", "demo", "--scratch-format", "qcow2")
	c.ok("container", "rm", "v")
}
