package main

import (
	"strings"
	"testing"
)

func TestCLIRunProcessIsolation(t *testing.T) {
	c := newCLI(t)
	img := demoImage(t, "oci-tar")
	// Imports on first use; output streams; the exit code comes back.
	out, errs, code := c.run("run", img, "--", "sh", "-c", "cat /etc/demo-release; test -e /etc/motd || echo motd-deleted; ls /app; hostname; exit 3")
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
