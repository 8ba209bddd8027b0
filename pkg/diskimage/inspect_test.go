package diskimage

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/vhd"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

// Disks made by this package: Inspect reports what was asked for, Check
// finds nothing wrong.
func TestInspectAndCheckOwnFiles(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	mk := func(name string, size int64, o CreateOptions) {
		t.Helper()
		if err := Create(p(name), size, o); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	mk("dyn.vhdx", 64<<20, CreateOptions{Format: diskformat.VHDX})
	mk("fix.vhdx", 16<<20, CreateOptions{Format: diskformat.VHDX, Type: vhdx.Fixed, BlockSize: 8 << 20})
	mk("s4k.vhdx", 16<<20, CreateOptions{Format: diskformat.VHDX, LogicalSectorSize: 4096})
	mk("child.vhdx", 0, CreateOptions{Format: diskformat.VHDX, Parent: p("dyn.vhdx")})
	mk("layer.vhd", 8<<20, CreateOptions{Format: diskformat.VHD})
	mk("dyn.vhd", 64<<20, CreateOptions{Format: diskformat.VHD, Type: vhdx.Dynamic})
	mk("plain.img", 8<<20, CreateOptions{Format: diskformat.Raw})
	sparseRaw(t, p("data.img"), 24<<20)
	if _, err := Convert(t.Context(), p("data.img"), p("data.vhd"), ConvertOptions{Format: diskformat.VHD, Type: vhdx.Dynamic}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		file     string
		format   diskformat.Format
		typ      string
		size     int64
		block    int64 // VHDX or dynamic VHD block size
		present  int64 // blocks present
		sector   int64 // VHDX logical sector size
		vhdBlock bool  // dynamic VHD allocation reported
	}{
		{"dyn.vhdx", diskformat.VHDX, "dynamic", 64 << 20, 1 << 20, 0, 512, false},
		{"fix.vhdx", diskformat.VHDX, "fixed", 16 << 20, 8 << 20, 2, 512, false},
		{"s4k.vhdx", diskformat.VHDX, "dynamic", 16 << 20, 1 << 20, 0, 4096, false},
		{"child.vhdx", diskformat.VHDX, "differencing", 64 << 20, 1 << 20, 0, 512, false},
		{"layer.vhd", diskformat.VHD, "fixed", 8 << 20, 0, 0, 0, false},
		{"dyn.vhd", diskformat.VHD, "dynamic", 64 << 20, 2 << 20, 0, 0, true},
		// sparseRaw's islands lie at 0, 3 MiB, 12 MiB and 24 MiB-70000: 2 MiB blocks 0, 1, 6, 11.
		{"data.vhd", diskformat.VHD, "dynamic", 24 << 20, 2 << 20, 4, 0, true},
		{"plain.img", diskformat.Raw, "raw", 8 << 20, 0, 0, 0, false},
	} {
		in, err := Inspect(p(tc.file))
		if err != nil {
			t.Errorf("Inspect %s: %v", tc.file, err)
			continue
		}
		st, _ := os.Stat(p(tc.file))
		if in.Path != p(tc.file) || in.Format != tc.format || in.Type != tc.typ || in.VirtualSize != tc.size || in.FileSize != st.Size() {
			t.Errorf("Inspect %s = %+v, want %s %s of %d bytes, file %d", tc.file, in, tc.format, tc.typ, tc.size, st.Size())
		}
		if (in.VHDX != nil) != (tc.format == diskformat.VHDX) || (in.VHDFooter != nil) != (tc.format == diskformat.VHD) || (in.VHDDynamic != nil) != tc.vhdBlock {
			t.Errorf("Inspect %s: details vhdx %v, footer %v, dynamic %v do not fit the format", tc.file, in.VHDX != nil, in.VHDFooter != nil, in.VHDDynamic != nil)
		}
		if v := in.VHDX; v != nil && (v.BlockSize != tc.block || v.BlocksPresent != tc.present || v.LogicalSectorSize != tc.sector) {
			t.Errorf("Inspect %s: vhdx %+v, want block %d, %d present, sector %d", tc.file, v, tc.block, tc.present, tc.sector)
		}
		if v := in.VHDDynamic; v != nil && (v.BlockSize != tc.block || v.Blocks != tc.size/tc.block || v.BlocksPresent != tc.present) {
			t.Errorf("Inspect %s: dynamic VHD %+v, want block %d, %d present", tc.file, v, tc.block, tc.present)
		}
		rep, err := Check(p(tc.file), false)
		if err != nil || !rep.OK() || len(rep.Warnings) > 0 {
			t.Errorf("Check %s = %+v, %v; want sound", tc.file, rep, err)
		} else if (rep.VHDX != nil) != (tc.format == diskformat.VHDX) {
			t.Errorf("Check %s: VHDX info %v for a %s file", tc.file, rep.VHDX, tc.format)
		}
	}

	parent, _ := Inspect(p("dyn.vhdx"))
	child, _ := Inspect(p("child.vhdx"))
	if !strings.Contains(child.VHDX.ParentLinkage, parent.VHDX.DataWriteGUID.String()) {
		t.Errorf("child linkage %q does not name the parent's data-write GUID %s", child.VHDX.ParentLinkage, parent.VHDX.DataWriteGUID)
	}
}

// Damage is a problem in the report, not an error; the report says what.
func TestCheckFindsDamage(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	for _, n := range []string{"a.vhdx", "parent.vhdx"} {
		if err := Create(p(n), 16<<20, CreateOptions{Format: diskformat.VHDX}); err != nil {
			t.Fatal(err)
		}
	}
	if err := Create(p("child.vhdx"), 0, CreateOptions{Format: diskformat.VHDX, Parent: p("parent.vhdx")}); err != nil {
		t.Fatal(err)
	}
	if err := Create(p("a.vhd"), 8<<20, CreateOptions{Format: diskformat.VHD}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p("odd.img"), make([]byte, 1001), 0o644)

	corrupt := func(name string, offs ...int64) {
		b, err := os.ReadFile(p(name))
		if err != nil {
			t.Fatal(err)
		}
		for _, off := range offs {
			if off < 0 {
				off += int64(len(b))
			}
			b[off]++
		}
		os.WriteFile(p(name), b, 0o644)
	}
	corrupt("a.vhdx", 64<<10+200, 128<<10+200) // both headers
	corrupt("a.vhd", -512+50)                  // a geometry byte: the checksum no longer fits
	// Writing to the parent gives it a new data-write GUID: the child's
	// linkage no longer matches.
	d, err := vhdx.Open(p("parent.vhdx"), vhdx.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.WriteAt(bytes.Repeat([]byte{1}, 4096), 0)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ file, problem string }{
		{"a.vhdx", "CRC-32C"},
		{"a.vhd", "checksum"},
		{"child.vhdx", "parent"},
	} {
		rep, err := Check(p(tc.file), false)
		if err != nil {
			t.Errorf("Check %s: %v; want a report", tc.file, err)
			continue
		}
		if rep.OK() || !strings.Contains(strings.Join(rep.Problems, "\n"), tc.problem) {
			t.Errorf("Check %s: problems %q, want one about %s", tc.file, rep.Problems, tc.problem)
		}
	}
	rep, err := Check(p("odd.img"), false)
	if err != nil || !rep.OK() || len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "1001") {
		t.Errorf("Check of a 1001-byte raw file = %+v, %v; want sound with a warning about its size", rep, err)
	}

	for _, f := range []func(string) error{
		func(s string) error { _, err := Inspect(s); return err },
		func(s string) error { _, err := Check(s, false); return err },
	} {
		if err := f(p("missing.img")); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing.img") {
			t.Errorf("missing file: %v, want a not-exist error naming it", err)
		}
	}
}

// The JSON field names are an interface: `disk info --json` and `disk check
// --json` print these values and scripts read them.
func TestJSONFieldNames(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	Create(p("base.vhdx"), 8<<20, CreateOptions{Format: diskformat.VHDX})
	Create(p("child.vhdx"), 0, CreateOptions{Format: diskformat.VHDX, Parent: p("base.vhdx")})
	Create(p("dyn.vhd"), 8<<20, CreateOptions{Format: diskformat.VHD, Type: vhdx.Dynamic})
	Create(p("raw.img"), 8<<20, CreateOptions{Format: diskformat.Raw})
	footer := "checksum creatorApp creatorHostOS creatorVersion currentSize dataOffset diskType features formatVersion " +
		"geometry geometry.cylinders geometry.heads geometry.sectorsPerTrack originalSize savedState timestamp uniqueID"
	vhdxInfo := "blockSize blocks blocksPresent creator dataWriteGUID diskID fileSize fileWriteGUID logicalSectorSize " +
		"parentLinkage parentLocator physicalSectorSize type virtualSize"
	prefixed := func(prefix, names string) string {
		f := strings.Fields(names)
		for i := range f {
			f[i] = prefix + f[i]
		}
		return strings.Join(f, " ")
	}
	for _, tc := range []struct {
		file, info, check string
	}{
		{"child.vhdx", "fileSize format path type virtualSize vhdx " + prefixed("vhdx.", vhdxInfo),
			"info " + prefixed("info.", vhdxInfo) + " info.parentPath problems warnings"},
		{"dyn.vhd", "fileSize format path type vhdDynamic vhdDynamic.blockSize vhdDynamic.blocks vhdDynamic.blocksPresent " +
			"vhdFooter " + prefixed("vhdFooter.", footer) + " virtualSize", "problems warnings"},
		{"raw.img", "fileSize format path type virtualSize", "problems warnings"},
	} {
		in, err := Inspect(p(tc.file))
		if err != nil {
			t.Fatal(err)
		}
		rep, err := Check(p(tc.file), false)
		if err != nil {
			t.Fatal(err)
		}
		if got := jsonFields(t, in); got != sortWords(tc.info) {
			t.Errorf("Inspect(%s) JSON fields:\n got %s\nwant %s", tc.file, got, sortWords(tc.info))
		}
		if got := jsonFields(t, rep); got != sortWords(tc.check) {
			t.Errorf("Check(%s) JSON fields:\n got %s\nwant %s", tc.file, got, sortWords(tc.check))
		}
	}
}

// jsonFields lists the object keys of v's JSON, nested ones as a.b; the
// keys of parentLocator are data, not field names.
func jsonFields(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			out = append(out, prefix+k)
			if sub, ok := v.(map[string]any); ok && k != "parentLocator" {
				walk(prefix+k+".", sub)
			}
		}
	}
	walk("", m)
	slices.Sort(out)
	return strings.Join(out, " ")
}

func sortWords(s string) string {
	f := strings.Fields(s)
	slices.Sort(f)
	return strings.Join(f, " ")
}

// windowsVHDX decompresses one of the VHDX files Windows wrote (see
// ../shared/testdata/windows/README.md beside the repository) into dir,
// leaving zero runs as holes.
func windowsVHDX(t *testing.T, dir, name string) string {
	t.Helper()
	src := filepath.Join(testutil.SharedTestdata(t, "windows", "vhdx"), name)
	f, err := os.Open(src)
	if err != nil {
		t.Fatalf("Windows test file: %v", err)
	}
	defer f.Close()
	var r io.Reader
	switch filepath.Ext(name) {
	case ".gz":
		if r, err = gzip.NewReader(f); err != nil {
			t.Fatalf("%s: %v", src, err)
		}
	case ".bz2":
		// Go's bzip2 takes minutes under -race for these 370 MB of output.
		cmd := exec.Command(testutil.NeedTool(t, "bzip2"), "-dc")
		cmd.Stdin = f
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := cmd.Wait(); err != nil {
				t.Errorf("bzip2 -dc %s: %v", src, err)
			}
		}()
		r = out
	default:
		t.Fatalf("%s: unknown compression", src)
	}
	out := filepath.Join(dir, strings.TrimSuffix(name, filepath.Ext(name)))
	w, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	buf, zero := make([]byte, 64<<10), make([]byte, 64<<10)
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, werr := w.WriteAt(buf[:n], off); werr != nil {
				t.Fatal(werr)
			}
		}
		off += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
	}
	if err := w.Truncate(off); err != nil {
		t.Fatal(err)
	}
	return out
}

// VHDX files written by Hyper-V and Disk2VHD: Inspect reads what Windows
// wrote; Check passes the sound ones, names the missing parent of the
// differencing one, and replays the pending log only when asked to.
func TestInspectAndCheckWindowsFiles(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		file, typ     string
		size, block   int64
		present       int64
		creator, warn string
	}{
		{"dynamic.vhdx.gz", "dynamic", 10 << 20, 32 << 20, 1, "Microsoft Windows 10.0.18363.0", ""},
		{"fixed.vhdx.gz", "fixed", 10 << 20, 2 << 20, 5, "Microsoft Windows 10.0.18363.0", ""},
		{"iotest-dynamic-1G.vhdx.bz2", "dynamic", 1 << 30, 32 << 20, 3, "Microsoft Windows 6.2.9200.16384", ""},
		{"test-disk2vhd.vhdx.bz2", "dynamic", 256 << 20, 2 << 20, 128, "d2v", "past the last block"},
		{"differencing.avhdx.gz", "differencing", 8 << 30, 2 << 20, 32, "Microsoft Windows 10.0.17763.0", ""},
	} {
		path := windowsVHDX(t, dir, tc.file)
		in, err := Inspect(path)
		if err != nil {
			t.Errorf("Inspect %s: %v", tc.file, err)
			continue
		}
		v := in.VHDX
		if in.Format != diskformat.VHDX || in.Type != tc.typ || in.VirtualSize != tc.size || v == nil ||
			v.BlockSize != tc.block || v.BlocksPresent != tc.present || v.Creator != tc.creator {
			t.Errorf("Inspect %s = %+v (vhdx %+v), want %s, %d bytes, block %d, %d present, creator %q",
				tc.file, in, v, tc.typ, tc.size, tc.block, tc.present, tc.creator)
		}
		rep, err := Check(path, false)
		if tc.typ == "differencing" {
			// Its parent is not public: a clear error, not a corrupt report.
			if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "parent not found") {
				t.Errorf("Check %s: %+v, %v; want a parent-not-found error", tc.file, rep, err)
			}
			continue
		}
		if err != nil || !rep.OK() || rep.VHDX == nil || rep.VHDX.DiskID != v.DiskID {
			t.Errorf("Check %s = %+v, %v; want sound, describing disk %s", tc.file, rep, err, v.DiskID)
		} else if w := strings.Join(rep.Warnings, "\n"); (tc.warn == "") != (w == "") || !strings.Contains(w, tc.warn) {
			t.Errorf("Check %s: warnings %q, want %q", tc.file, rep.Warnings, tc.warn)
		}
	}

	// A pending log: read-only, Inspect refuses and Check reports it,
	// leaving the file alone; repair replays it.
	path := windowsVHDX(t, dir, "vhdx-log-replay.vhdx.gz")
	before, _ := os.ReadFile(path)
	if _, err := Inspect(path); !errors.Is(err, vhdx.ErrLogNeedsReplay) {
		t.Errorf("Inspect of a VHDX with a pending log: %v, want ErrLogNeedsReplay", err)
	}
	rep, err := Check(path, false)
	if err != nil || rep.OK() || !strings.Contains(strings.Join(rep.Problems, ""), "log") {
		t.Errorf("Check of a VHDX with a pending log = %+v, %v; want a problem about the log", rep, err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("Check without repair changed the file")
	}
	rep, err = Check(path, true)
	if err != nil || !rep.OK() || rep.VHDX == nil || !rep.VHDX.LogReplayed || !slices.Contains(rep.Warnings, "the log was replayed") {
		t.Fatalf("Check --repair = %+v, %v; want the log replayed", rep, err)
	}
	in, err := Inspect(path)
	if err != nil || in.Type != "dynamic" || in.VirtualSize != 1<<30 || in.VHDX.LogReplayed {
		t.Errorf("Inspect after repair = %+v, %v; want a clean 1 GiB dynamic VHDX", in, err)
	}
}

// Inspect must not mistake a damaged VHD for raw data: the footer copy of a
// dynamic VHD still describes it, and the damage is Check's to report.
func TestInspectDynamicVHDWithDamagedFooter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.vhd")
	if err := Create(path, 8<<20, CreateOptions{Format: diskformat.VHD, Type: vhdx.Dynamic}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	b[len(b)-512+50]++
	os.WriteFile(path, b, 0o644)
	in, err := Inspect(path)
	if err != nil || in.Format != diskformat.VHD || in.Type != "dynamic" || in.VHDDynamic == nil || in.VHDFooter.DiskType != vhd.DiskTypeDynamic {
		t.Errorf("Inspect = %+v, %v; want the dynamic VHD described by its footer copy", in, err)
	}
	// Still usable through the copy, so a warning rather than a problem.
	if rep, err := Check(path, false); err != nil || !rep.OK() || len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "footer") {
		t.Errorf("Check = %+v, %v; want a warning about the damaged footer", rep, err)
	}
}
