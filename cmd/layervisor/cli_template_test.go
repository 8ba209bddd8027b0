package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/pkg/uvm"
)

// The first VM run saves a template, the next is restored from it, and
// --cold boots the kernel: all three print the same and exit alike. A
// long-lived UVM is restored too and shows its memory in uvm ls; template
// rm removes the template.
func TestCLITemplates(t *testing.T) {
	c := vmCLI(t)
	img := demoImage(t, "oci-tar")
	script := "cat /etc/demo-release; echo to-stderr >&2; ls /app; exit 3"
	out1, err1, code1 := c.run("run", "--isolation", "vm", img, "--", "sh", "-c", script)
	var ts []uvm.TemplateInfo
	if err := json.Unmarshal([]byte(c.ok("--json", "uvm", "template", "ls")), &ts); err != nil || len(ts) != 1 || ts[0].Stale != "" {
		t.Fatalf("templates after the first VM run: %+v %v", ts, err)
	}
	out2, err2, code2 := c.run("run", "--isolation", "vm", "demo:latest", "--", "sh", "-c", script)
	out3, err3, code3 := c.run("run", "--isolation", "vm", "--cold", "demo:latest", "--", "sh", "-c", script)
	if code1 != 3 || code2 != 3 || code3 != 3 || out1 != out2 || out1 != out3 || !strings.Contains(out1, "layervisor demo 2") {
		t.Fatalf("saving run: exit %d %q; templated: exit %d %q; cold: exit %d %q", code1, out1, code2, out2, code3, out3)
	}
	for _, e := range []string{err1, err2, err3} {
		if !strings.Contains(e, "to-stderr") {
			t.Fatalf("stderr %q", e)
		}
	}

	c.ok("uvm", "create", "v1")
	c.ok("uvm", "start", "v1")
	var rows []struct {
		uvm.State
		Memory *uvm.Memory `json:"memory"`
	}
	if err := json.Unmarshal([]byte(c.ok("--json", "uvm", "ls")), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("uvm ls: %v", err)
	}
	if r := rows[0]; r.Template != ts[0].Key || r.Memory == nil || r.Memory.HostRSS <= 0 {
		t.Fatalf("uvm ls: template %q (want %s), memory %+v", r.Template, ts[0].Key, r.Memory)
	}
	if out := c.ok("uvm", "ls"); !strings.Contains(out, "HOST-RSS") || !strings.Contains(out, "template "+ts[0].Key[:8]) {
		t.Fatalf("uvm ls:\n%s", out)
	}
	c.ok("uvm", "rm", "v1")
	c.fail("not a template key", "uvm", "template", "rm", "nope")
	c.ok("uvm", "template", "rm", ts[0].Key)
	if out := c.ok("--json", "uvm", "template", "ls"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("templates after rm: %s", out)
	}
	assertNoQEMU(t, c.root)
}
