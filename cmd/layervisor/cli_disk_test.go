package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

// diskCLI drives `layervisor disk`, which needs neither root nor a store.
func diskCLI(t *testing.T) (*cli, string) {
	dir := t.TempDir()
	return &cli{t: t, bin: layervisorBin(t), root: filepath.Join(dir, "root")}, dir
}

func TestCLIDisk(t *testing.T) {
	c, dir := diskCLI(t)
	qemuImg := testutil.NeedTool(t, "qemu-img")
	p := func(n string) string { return filepath.Join(dir, n) }

	c.ok("disk", "create", p("dyn.vhdx"), "64M")
	c.ok("disk", "create", p("fix.vhdx"), "16M", "--type", "fixed", "--block-size", "8M")
	c.ok("disk", "create", p("s4k.vhdx"), "16M", "--logical-sector-size", "4096")
	c.ok("disk", "create", p("layer.vhd"), "8M")
	c.ok("disk", "create", p("plain.img"), "8M")
	c.ok("disk", "create", p("child.vhdx"), "--parent", p("dyn.vhdx"))

	var info struct {
		Format, Type string
		VirtualSize  int64
		VHDX         struct {
			BlockSize         int64
			LogicalSectorSize int64
			ParentLinkage     string
			DataWriteGUID     string
		}
	}
	for _, tc := range []struct {
		file, format, typ string
		size, block       int64
	}{
		{"dyn.vhdx", "vhdx", "dynamic", 64 << 20, 1 << 20},
		{"fix.vhdx", "vhdx", "fixed", 16 << 20, 8 << 20},
		{"child.vhdx", "vhdx", "differencing", 64 << 20, 1 << 20},
		{"layer.vhd", "vhd", "fixed", 8 << 20, 0},
		{"plain.img", "raw", "raw", 8 << 20, 0},
	} {
		out := c.ok("disk", "info", "--json", p(tc.file))
		info.VHDX.BlockSize = 0
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("disk info --json %s: %v\n%s", tc.file, err, out)
		}
		if info.Format != tc.format || info.Type != tc.typ || info.VirtualSize != tc.size || info.VHDX.BlockSize != tc.block {
			t.Errorf("disk info %s = %+v, want %s %s %d block %d", tc.file, info, tc.format, tc.typ, tc.size, tc.block)
		}
	}
	c.ok("disk", "info", "--json", p("dyn.vhdx"))
	json.Unmarshal([]byte(c.ok("disk", "info", "--json", p("dyn.vhdx"))), &info)
	parentGUID := info.VHDX.DataWriteGUID
	json.Unmarshal([]byte(c.ok("disk", "info", "--json", p("child.vhdx"))), &info)
	if !strings.Contains(info.VHDX.ParentLinkage, parentGUID) {
		t.Errorf("child linkage %q does not name the parent's data-write GUID %s", info.VHDX.ParentLinkage, parentGUID)
	}
	for _, f := range []string{"dyn.vhdx", "fix.vhdx", "s4k.vhdx", "child.vhdx", "layer.vhd", "plain.img"} {
		if out := c.ok("disk", "check", p(f)); !strings.Contains(out, "no problems") {
			t.Errorf("disk check %s: %s", f, out)
		}
	}

	// Convert through every format; QEMU sees the same content throughout.
	mustRun(t, "dd", "if=/dev/urandom", "of="+p("data.img"), "bs=1M", "count=3", "seek=2", "conv=notrunc", "status=none")
	mustRun(t, "truncate", "-s", "12M", p("data.img"))
	c.ok("disk", "convert", p("data.img"), p("data.vhdx"))
	c.ok("disk", "convert", p("data.vhdx"), p("data.vhd"))
	c.ok("disk", "convert", p("data.vhd"), p("data-fixed.vhdx"), "--type", "fixed")
	c.ok("disk", "convert", p("data-fixed.vhdx"), p("back.bin"), "--format", "raw")
	mustRun(t, qemuImg, "check", p("data.vhdx"))
	mustRun(t, qemuImg, "compare", "-F", "raw", p("data.vhdx"), p("data.img"))
	mustRun(t, qemuImg, "compare", "-f", "raw", "-F", "raw", p("back.bin"), p("data.img"))
	var res struct{ WrittenBytes int64 }
	json.Unmarshal([]byte(c.ok("disk", "convert", "--json", p("data.img"), p("again.vhdx"))), &res)
	if res.WrittenBytes != 3<<20 {
		t.Errorf("convert wrote %d bytes, want the 3 MiB of data only", res.WrittenBytes)
	}

	// Dynamic VHDs: created empty, converted sparse, sound, QEMU agrees.
	var dyn struct {
		Format, Type string
		VirtualSize  int64
		VHDDynamic   struct{ BlockSize, Blocks, BlocksPresent int64 }
	}
	c.ok("disk", "create", p("dyn.vhd"), "64M", "--type", "dynamic")
	c.ok("disk", "convert", p("data.img"), p("data-dyn.vhd"), "--type", "dynamic")
	for _, tc := range []struct {
		file          string
		size, present int64
	}{{"dyn.vhd", 64 << 20, 0}, {"data-dyn.vhd", 12 << 20, 2}} { // the data lies in 2 MiB blocks 1 and 2
		out := c.ok("disk", "info", "--json", p(tc.file))
		if err := json.Unmarshal([]byte(out), &dyn); err != nil {
			t.Fatalf("disk info --json %s: %v\n%s", tc.file, err, out)
		}
		d := dyn.VHDDynamic
		if dyn.Format != "vhd" || dyn.Type != "dynamic" || dyn.VirtualSize != tc.size || d.BlockSize != 2<<20 ||
			d.Blocks != tc.size/(2<<20) || d.BlocksPresent != tc.present {
			t.Errorf("disk info %s = %+v, want a dynamic vhd of %d bytes, %d blocks present", tc.file, dyn, tc.size, tc.present)
		}
		if out := c.ok("disk", "check", p(tc.file)); !strings.Contains(out, "no problems") {
			t.Errorf("disk check %s: %s", tc.file, out)
		}
	}
	mustRun(t, qemuImg, "compare", "--image-opts", "driver=vpc,force_size_calc=current_size,file.filename="+p("data-dyn.vhd"),
		"driver=raw,file.filename="+p("data.img"))

	// Errors name their input; nothing is left behind.
	c.fail("data.vhdx", "disk", "convert", p("data.img"), p("data.vhdx"))
	c.fail("cannot tell the format", "disk", "create", p("noext"), "1M")
	c.fail("unknown disk format", "disk", "create", p("x.vhdx"), "1M", "--format", "qcow9")
	c.fail("block size", "disk", "create", p("x.vhdx"), "8M", "--block-size", "3M")
	c.fail("SIZE is required", "disk", "create", p("x.vhdx"))
	c.fail("missing.img", "disk", "info", p("missing.img"))
	c.fail("unknown VHD type", "disk", "create", p("x.vhd"), "8M", "--type", "sparse")
	c.fail("2040 GiB", "disk", "create", p("x.vhd"), "2041G", "--type", "dynamic")
	if _, err := os.Stat(p("x.vhdx")); err == nil {
		t.Error("a failed create left x.vhdx")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}

	// Corruption: exit status 2 and the problem on stdout.
	b, _ := os.ReadFile(p("data.vhdx"))
	b[64<<10+200]++
	b[128<<10+200]++
	os.WriteFile(p("bad.vhdx"), b, 0o644)
	out, _, code := c.run("disk", "check", p("bad.vhdx"))
	if code != 2 || !strings.Contains(out, "CRC-32C") {
		t.Errorf("disk check of a file with both headers damaged: exit %d, %q", code, out)
	}
	b, _ = os.ReadFile(p("layer.vhd"))
	b[len(b)-512+50]++ // geometry byte; checksum now wrong
	os.WriteFile(p("bad.vhd"), b, 0o644)
	if _, _, code := c.run("disk", "check", p("bad.vhd")); code == 0 {
		t.Error("disk check accepted a VHD with a bad footer checksum")
	}
	// A modified parent breaks its child's linkage.
	mustRun(t, testutil.NeedTool(t, "qemu-io"), "-f", "vhdx", "-c", "write -P 1 0 4k", p("dyn.vhdx"))
	out, _, code = c.run("disk", "check", p("child.vhdx"))
	if code != 2 || !strings.Contains(out, "parent") {
		t.Errorf("disk check of a child whose parent changed: exit %d, %q", code, out)
	}
}
