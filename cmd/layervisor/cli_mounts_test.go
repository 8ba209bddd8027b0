package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// mountFixture is a host directory and a single host file for bind mounts.
type mountFixture struct {
	dir, file, rwDir string
}

func newMountFixture(t *testing.T) mountFixture {
	t.Helper()
	base := t.TempDir()
	f := mountFixture{dir: filepath.Join(base, "ro"), file: filepath.Join(base, "one.txt"), rwDir: filepath.Join(base, "rw")}
	for _, d := range []string{f.dir, f.rwDir, filepath.Join(base, "sibling")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(f.dir, "data"), []byte("host data\n"), 0o644)
	os.WriteFile(f.file, []byte("one file\n"), 0o644)
	os.WriteFile(filepath.Join(base, "sibling", "secret"), []byte("x"), 0o644)
	return f
}

// check asserts what the container saw and that the host kept its files.
func (f mountFixture) check(t *testing.T, mode, out string) {
	t.Helper()
	for _, want := range []string{"ro-read:host data", "file-read:one file", "ro-write:refused", "file-write:refused", "rw-write:ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("%s: output lacks %q:\n%s", mode, want, out)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(f.dir, "data")); string(b) != "host data\n" {
		t.Errorf("%s: read-only host file changed to %q", mode, b)
	}
	if b, _ := os.ReadFile(f.file); string(b) != "one file\n" {
		t.Errorf("%s: read-only single file changed to %q", mode, b)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "new")); err == nil {
		t.Errorf("%s: a file appeared in the read-only host directory", mode)
	}
	if b, err := os.ReadFile(filepath.Join(f.rwDir, "from-"+mode)); err != nil || string(b) != mode+"\n" {
		t.Errorf("%s: write through the read-write mount: %q %v", mode, b, err)
	}
}

const mountScript = `echo "ro-read:$(cat /ro/data)"; echo "file-read:$(cat /etc/one.txt)"
(echo x > /ro/new) 2>/dev/null && echo ro-write:allowed || echo ro-write:refused
(echo x >> /etc/one.txt) 2>/dev/null && echo file-write:allowed || echo file-write:refused
echo "$MODE" > /rw/from-$MODE && echo rw-write:ok
ls /etc/one.txt /etc/secret 2>&1 | tr '\n' ' '; echo`

// Binds given as -v and --mount behave the same in both isolation modes,
// and what is read-only stays read-only on the host.
func TestCLIRunBindMountsBothModes(t *testing.T) {
	c := vmCLI(t)
	f := newMountFixture(t)
	img := demoImage(t, "oci-tar")
	c.ok("image", "import", "--name", "demo:latest", img)
	for _, mode := range []string{"process", "vm"} {
		out, errs, code := c.run("run", "--isolation", mode, "-e", "MODE="+mode,
			"-v", f.dir+":/ro:ro", "--mount", "type=bind,source="+f.file+",target=/etc/one.txt,readonly",
			"-v", f.rwDir+":/rw", "demo:latest", "--", "sh", "-c", mountScript)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", mode, code, errs)
		}
		f.check(t, mode, out)
		if strings.Contains(out, "/etc/secret ") && !strings.Contains(out, "No such file") {
			t.Errorf("%s: a single-file mount exposed its siblings: %s", mode, out)
		}
	}
}

// Mounts that need a utility VM are refused in process mode with an error
// naming the mount, before anything is created; bad mount flags name
// themselves.
func TestCLIRunMountErrors(t *testing.T) {
	c := newCLI(t)
	img := demoImage(t, "oci-tar")
	c.ok("image", "import", "--name", "demo:latest", img)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mount", "type=sandbox,source=cache,target=/cache"}, "sandbox mounts live in a utility VM"},
		{[]string{"--mount", "type=virtual-disk,source=/nonexistent.vhdx,target=/d"}, "needs --isolation vm"},
		{[]string{"-v", "/does/not/exist:/x"}, "/does/not/exist"},
		{[]string{"-v", "relative:/x"}, `-v "relative:/x"`},
		{[]string{"--mount", "type=bind,source=/tmp,target=/x,bogus"}, `unknown key "bogus"`},
		{[]string{"--spec", "/nonexistent/config.json"}, "/nonexistent/config.json"},
	} {
		args := append(append([]string{"run", "--isolation", "process"}, tc.args...), "demo:latest", "--", "true")
		_, errs, code := c.run(args...)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want an error with %q", tc.args, code, errs, tc.want)
		}
	}
	if out := c.ok("container", "ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("refused runs left containers: %s", out)
	}
}

// --spec drives the process (args, env, cwd) and mounts, in the VM: a bind,
// a sandbox directory and a virtual disk, with runc's default kernel mounts
// skipped. The same spec in process mode runs what that mode allows.
func TestCLIRunSpecAndDisksInVM(t *testing.T) {
	c := vmCLI(t)
	f := newMountFixture(t)
	dir, content := t.TempDir(), t.TempDir()
	disk := filepath.Join(dir, "data.img")
	if err := os.WriteFile(filepath.Join(content, "hello"), []byte("on the disk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", content, disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	spec := filepath.Join(dir, "config.json")
	os.WriteFile(spec, []byte(`{"ociVersion":"1.0.2",
  "process":{"args":["sh","-c","echo \"$GREETING from $(pwd)\"; cat /ro/data; cat /disk/hello; echo s > /cache/x && cat /cache/x; (echo y > /disk/new) 2>/dev/null && echo disk-write:allowed || echo disk-write:refused"],
             "env":["PATH=/bin:/usr/bin","GREETING=hi"],"cwd":"/etc"},
  "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
            {"destination":"/dev","type":"tmpfs","source":"tmpfs"},
            {"destination":"/ro","type":"bind","source":"`+f.dir+`","options":["rbind","ro"]},
            {"destination":"/cache","type":"bind","source":"sandbox://cache"},
            {"destination":"/disk","type":"virtual-disk","source":"`+disk+`","options":["ro"]}]}`), 0o644)
	img := demoImage(t, "oci-tar")
	c.ok("image", "import", "--name", "demo:latest", img)
	out, errs, code := c.run("run", "--isolation", "vm", "--spec", spec, "demo:latest")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := "hi from /etc\nhost data\non the disk\ns\ndisk-write:refused\n"
	if out != want {
		t.Fatalf("output\n%q\nwant\n%q", out, want)
	}
	// The command line overrides the spec's command; -w its cwd.
	out, errs, code = c.run("run", "--isolation", "vm", "--spec", spec, "-w", "/", "demo:latest", "--", "sh", "-c", "pwd; echo $GREETING; ls /disk")
	if code != 0 || out != "/\nhi\nhello\nlost+found\n" {
		t.Fatalf("override: exit %d, output %q, stderr %s", code, out, errs)
	}
	// Process mode refuses the spec's sandbox and disk mounts by name.
	_, errs, code = c.run("run", "--isolation", "process", "--spec", spec, "demo:latest")
	if code == 0 || !strings.Contains(errs, "sandbox://cache") {
		t.Fatalf("process mode with VM-only mounts: exit %d, stderr %q", code, errs)
	}
	// The disk was attached read-only: its content is unchanged.
	if out, err := exec.Command("e2fsck", "-n", "-f", disk).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck after a read-only attach: %v %s", err, out)
	}
}
