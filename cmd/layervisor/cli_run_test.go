package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestCLIRunProcessIsolation(t *testing.T) {
	c := newCLI(t)
	img := demoImage(t, "oci-tar")
	// Imports on first use; output streams; the exit code comes back.
	out, errs, code := c.run("run", "--hostname", "layervisor", img, "--", "sh", "-c", "cat /etc/demo-release; test -e /etc/motd || echo motd-deleted; ls /app; hostname; exit 3")
	if code != 3 {
		t.Fatalf("exit %d, want 3; stderr %s", code, errs)
	}
	want := "layervisor demo 2\nmotd-deleted\nblob.bin\nconfig\nlayervisor\n"
	if out != want {
		t.Fatalf("output %q, want %q", out, want)
	}
	// The image is now known by name; a missing command exits 127.
	_, errs, code = c.run("run", "demo:latest", "--", "no-such-cmd")
	if code != 127 || !strings.Contains(errs, "no-such-cmd") {
		t.Fatalf("missing command: exit %d, stderr %q", code, errs)
	}
	// Nothing is left: no container, no mount (checked by newCLI's cleanup).
	if out := c.ok("container", "ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("run left containers: %s", out)
	}
	c.fail("--isolation", "run", "--isolation", "bogus", "demo:latest", "--", "true")
	c.fail("usage", "run", "demo:latest", "true")
}

// Ctrl-C during run: the command is stopped and everything is torn down.
func TestCLIRunInterrupted(t *testing.T) {
	c := newCLI(t)
	c.ok("image", "import", "--name", "demo", demoImage(t, "oci-tar"))
	cmd := exec.Command(c.bin, "--root", c.root, "run", "--stop-timeout", "1s", "demo", "--", "sleep", "60")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the container is mounted, then interrupt.
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _, _ := c.run("container", "ls", "--json")
		if strings.Contains(out, `"mounted": true`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("run never mounted its container")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err == nil {
		t.Fatal("interrupted run exited 0")
	}
	if out := c.ok("container", "ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("interrupted run left containers: %s (stderr %s)", out, errb.String())
	}
}
