package hostrun

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A helper started before the container's root is mounted runs the command
// in that root: it makes its mount namespace when the command arrives. Its
// stdio, environment and PID namespace are the command's.
func TestHelperStartedBeforeTheRootIsMounted(t *testing.T) {
	src := busyboxRoot(t)
	// Under a private mount, so that nothing propagates to a namespace
	// copied before the root was mounted, whatever the host's "/" is.
	base := t.TempDir()
	if err := unix.Mount("tmpfs", base, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(base, unix.MNT_DETACH)
	if err := unix.Mount("", base, "", unix.MS_PRIVATE, ""); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(base, "rootfs")
	os.Mkdir(root, 0o755)
	h, err := StartHelper()
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(src, root, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(root, unix.MNT_DETACH)
	var out, errb bytes.Buffer
	code, err := h.Run(context.Background(), Options{Rootfs: root, Args: []string{"sh", "-c", "cat /marker; echo $$ $GREETING; cat; exit 3"},
		Env: []string{"PATH=/bin", "GREETING=hello"}, Stdin: strings.NewReader("from stdin\n"), Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 || out.String() != "inside\n1 hello\nfrom stdin\n" {
		t.Fatalf("code %d stdout %q stderr %q", code, out.String(), errb.String())
	}
}

// Closing an unused helper ends it; a helper that died before taking its
// command says so (ErrHelperGone), and nothing ran.
func TestHelperClosedOrGone(t *testing.T) {
	root := busyboxRoot(t)
	h, err := StartHelper()
	if err != nil {
		t.Fatal(err)
	}
	pid := h.cmd.Process.Pid
	h.Close()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("closed helper %d still there: %v", pid, err)
	}

	h, err = StartHelper()
	if err != nil {
		t.Fatal(err)
	}
	h.cmd.Process.Kill()
	<-h.exited
	ran := filepath.Join(root, "ran")
	_, err = h.Run(context.Background(), Options{Rootfs: root, Args: []string{"sh", "-c", "echo > /ran"}})
	if !errors.Is(err, ErrHelperGone) {
		t.Fatalf("run in a dead helper: %v", err)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the command ran")
	}
}

// Stdout and stderr given as one writer share one pipe: the command's
// output arrives in order, with no concurrent writes to the writer (the
// race detector checks).
func TestHelperOneWriterForBoth(t *testing.T) {
	root := busyboxRoot(t)
	var both bytes.Buffer
	code, err := Run(context.Background(), Options{Rootfs: root, Args: []string{"sh", "-c", "for i in 1 2 3; do echo out$i; echo err$i >&2; done"},
		Stdout: &both, Stderr: &both})
	if err != nil || code != 0 {
		t.Fatalf("exit %d: %v", code, err)
	}
	if want := "out1\nerr1\nout2\nerr2\nout3\nerr3\n"; both.String() != want {
		t.Fatalf("output %q, want %q", both.String(), want)
	}
}
