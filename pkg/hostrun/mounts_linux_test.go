package hostrun

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Binds land inside the root even through the image's symlinks, read-only
// ones refuse writes (also after a remount attempt), and none of them
// shows on the host afterwards.
func TestBindMounts(t *testing.T) {
	root := busyboxRoot(t)
	host := t.TempDir()
	roDir, rwDir, file := filepath.Join(host, "ro"), filepath.Join(host, "rw"), filepath.Join(host, "f.txt")
	os.Mkdir(roDir, 0o755)
	os.Mkdir(rwDir, 0o755)
	os.WriteFile(filepath.Join(roDir, "data"), []byte("ro data"), 0o644)
	os.WriteFile(file, []byte("file"), 0o644)
	// An image symlink that tries to aim a mount at the host.
	outside := filepath.Join(host, "outside")
	os.Mkdir(outside, 0o755)
	os.Symlink("../../../../../../.."+outside, filepath.Join(root, "evil"))
	os.Symlink(outside, filepath.Join(root, "evil-abs"))

	var out, errb bytes.Buffer
	script := `cat /ro/data; echo; cat /etc/f.txt; echo
(echo x > /ro/new) 2>/dev/null && echo ro:allowed || echo ro:refused
mount -o remount,rw /ro 2>/dev/null && echo remount:allowed || echo remount:refused
(echo x > /etc/f.txt) 2>/dev/null && echo file:allowed || echo file:refused
echo rw > /rw/new && echo rw:ok
cat /evil/x/data /evil-abs/y/data`
	code, err := Run(context.Background(), Options{Rootfs: root, Args: []string{"sh", "-c", script}, Stdout: &out, Stderr: &errb,
		Mounts: []Mount{
			{Source: roDir, Target: "/ro", ReadOnly: true},
			{Source: file, Target: "/etc/f.txt", ReadOnly: true},
			{Source: rwDir, Target: "/rw"},
			{Source: roDir, Target: "/evil/x", ReadOnly: true},
			{Source: roDir, Target: "/evil-abs/y", ReadOnly: true},
		}})
	if err != nil || code != 0 {
		t.Fatalf("exit %d %v: %s", code, err, errb.String())
	}
	want := "ro data\nfile\nro:refused\nremount:refused\nfile:refused\nrw:ok\nro dataro data"
	if got := strings.TrimSpace(out.String()); got != want {
		t.Fatalf("output\n%q\nwant\n%q", got, want)
	}
	if b, _ := os.ReadFile(file); string(b) != "file" {
		t.Errorf("read-only file changed: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(rwDir, "new")); string(b) != "rw\n" {
		t.Errorf("read-write bind: %q", b)
	}
	// The symlinked targets were made inside the root (the container read
	// the data through them), not on the host.
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("a mount target escaped the root: %s holds %v", outside, ents)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), root) {
		t.Errorf("a bind mount is visible on the host:\n%s", mi)
	}
	// A bind of a directory onto an image file is refused by name.
	os.WriteFile(filepath.Join(root, "plain"), nil, 0o644)
	_, err = Run(context.Background(), Options{Rootfs: root, Args: []string{"true"}, Stderr: &errb,
		Mounts: []Mount{{Source: roDir, Target: "/plain"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errb.String(), "/plain") || !strings.Contains(errb.String(), "not a directory") {
		t.Errorf("dir over file: stderr %q", errb.String())
	}
}
