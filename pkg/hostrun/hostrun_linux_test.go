package hostrun

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

func TestMain(m *testing.M) {
	MaybeInit()
	os.Exit(m.Run())
}

// busyboxRoot makes a tiny root with the static busybox.
func busyboxRoot(t *testing.T) string {
	t.Helper()
	testutil.NeedRoot(t)
	bb := testutil.NeedTool(t, "busybox")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "tmp"), 0o1777)
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "bin", "busybox"), data, 0o755)
	for _, app := range []string{"sh", "cat", "echo", "ls", "hostname", "true", "false", "mount", "mknod", "head", "wc", "grep", "insmod"} {
		os.Symlink("busybox", filepath.Join(root, "bin", app))
	}
	os.WriteFile(filepath.Join(root, "marker"), []byte("inside\n"), 0o644)
	return root
}

func run(t *testing.T, root string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code, err := Run(context.Background(), Options{Rootfs: root, Args: args, Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func TestRunInRoot(t *testing.T) {
	root := busyboxRoot(t)
	code, out, errs := run(t, root, "sh", "-c", "cat /marker; hostname; echo $$; ls /proc/1/ >/dev/null && echo proc-ok; exit 7")
	if code != 7 {
		t.Fatalf("exit code %d, stderr %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || lines[0] != "inside" || lines[1] != "layervisor" || lines[2] != "1" || lines[3] != "proc-ok" {
		t.Fatalf("unexpected output %q (stderr %q)", out, errs)
	}
	// The host's mounts did not change: /proc of the root is not mounted here.
	if _, err := os.Stat(filepath.Join(root, "proc", "1")); err == nil {
		t.Fatal("container /proc leaked into the host mount namespace")
	}
}

func TestRunCommandNotFound(t *testing.T) {
	root := busyboxRoot(t)
	code, _, errs := run(t, root, "no-such-command")
	if code != ExitCommandNotFound || !strings.Contains(errs, "no-such-command") {
		t.Fatalf("code %d stderr %q", code, errs)
	}
}
