package cimlayer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/cimfs"
	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/wclayer/cimlayer"
	"github.com/layervisor/layervisor/pkg/wclayer/synth"
	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

var baseOpts = synth.Options{Seed: 7, Files: 300, Bytes: 3 << 20, UtilityVM: true}

func baseTar(t testing.TB) []byte {
	var b bytes.Buffer
	if _, err := synth.Base(&b, baseOpts); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func childTar(t testing.TB, seed uint64) []byte {
	var b bytes.Buffer
	if _, err := synth.Child(&b, baseOpts, seed); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func importTar(t testing.TB, tarb []byte, dir string, parents ...string) cimlayer.Stats {
	t.Helper()
	st, err := cimlayer.Import(context.Background(), bytes.NewReader(tarb), dir, cimlayer.CIMPath(dir), parents, nil)
	if err != nil {
		t.Fatalf("import %s: %v", dir, err)
	}
	return st
}

// chain imports base, child 1 and child 2 under root/layers.
func chain(t *testing.T, root string, tars [][]byte) []string {
	var dirs []string
	for i, tb := range tars {
		d := filepath.Join(root, "layers", fmt.Sprintf("l%d", i))
		parents := slices.Clone(dirs)
		slices.Reverse(parents)
		importTar(t, tb, d, parents...)
		dirs = append(dirs, d)
	}
	return dirs
}

// model applies layer tars the way the spec says they stack, independently
// of the writer: upper-cased path → "kind sha256" (streams as path:stream).
func model(t *testing.T, tars [][]byte) map[string]string {
	m := map[string]string{}
	names := map[string]string{}
	for _, tb := range tars {
		r := wintar.NewReader(bytes.NewReader(tb))
		for {
			e, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			key := strings.ToUpper(e.Path)
			switch e.Kind {
			case wintar.KindWhiteout:
				for k := range m {
					if k == key || strings.HasPrefix(k, key+"/") || strings.HasPrefix(k, key+":") {
						delete(m, k)
					}
				}
			case wintar.KindFile, wintar.KindStream:
				h := sha256.New()
				if _, err := io.Copy(h, r); err != nil {
					t.Fatal(err)
				}
				if e.Kind == wintar.KindStream {
					key += ":" + strings.ToUpper(e.Stream)
				} else {
					for k := range m { // a new file has no old streams
						if strings.HasPrefix(k, key+":") {
							delete(m, k)
						}
					}
				}
				m[key] = "file " + hex.EncodeToString(h.Sum(nil))
			case wintar.KindHardlink:
				m[key] = m[strings.ToUpper(e.Target)]
			case wintar.KindDir:
				m[key] = "dir"
			default:
				m[key] = "link " + e.Target
			}
			names[key] = e.Path
		}
	}
	return m
}

// viewOf lists the CIM like model does, without the generated files.
func viewOf(t *testing.T, cimPath string) map[string]string {
	img, err := cimfs.Open(cimPath)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	m := map[string]string{}
	err = img.Walk(func(p string, f *cimfs.File) error {
		up := strings.ToUpper(p)
		if p == "" || up == "LAYOUT" || strings.HasSuffix(up, "_BASE") {
			return nil
		}
		info, err := f.Info()
		if err != nil {
			return err
		}
		switch {
		case len(info.ReparseData) > 0:
			target, _, err := wintar.DecodeReparse(info.ReparseData)
			if err != nil {
				return err
			}
			m[up] = "link " + target
		case f.IsDir():
			m[up] = "dir"
		default:
			m[up] = "file " + sum(t, f.Open)
		}
		ss, err := f.Streams()
		if err != nil {
			return err
		}
		for _, s := range ss {
			m[up+":"+strings.ToUpper(s.Name)] = "file " + sum(t, func() (*io.SectionReader, error) { return f.OpenStream(s.Name) })
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sum(t *testing.T, open func() (*io.SectionReader, error)) string {
	r, err := open()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// dump is everything the CIM stores about every name, hard links as the
// first name of their file.
func dump(t *testing.T, cimPath string) map[string]string {
	img, err := cimfs.Open(cimPath)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	out := map[string]string{}
	first := map[uint32]string{}
	err = img.Walk(func(p string, f *cimfs.File) error {
		info, err := f.Info()
		if err != nil {
			return err
		}
		s := fmt.Sprintf("attr=%#x c=%d w=%d ch=%d a=%d sd=%x ea=%x rp=%x size=%d",
			info.Attributes, info.CreationTime.UnixNano(), info.LastWriteTime.UnixNano(), info.ChangeTime.UnixNano(),
			info.LastAccessTime.UnixNano(), info.SecurityDescriptor, info.EAs, info.ReparseData, f.Size)
		if !f.IsDir() {
			if fp, ok := first[f.ID]; ok {
				s += " link=" + fp
			} else {
				first[f.ID] = p
			}
			s += " data=" + sum(t, f.Open)
			ss, err := f.Streams()
			if err != nil {
				return err
			}
			for _, st := range ss {
				s += fmt.Sprintf(" stream %s=%s", st.Name, sum(t, func() (*io.SectionReader, error) { return f.OpenStream(st.Name) }))
			}
		}
		out[strings.ToUpper(p)] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffMaps(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	n := 0
	for k, v := range want {
		if got[k] != v && n < 10 {
			t.Errorf("%s: %s: want %q, got %q", what, k, v, got[k])
			n++
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok && n < 10 {
			t.Errorf("%s: %s: unexpected %q", what, k, v)
			n++
		}
	}
}

func readHive(t *testing.T, p string) *regf.Hive {
	h, err := regf.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestChain(t *testing.T) {
	root := t.TempDir()
	tars := [][]byte{baseTar(t), childTar(t, 101), childTar(t, 202)}
	dirs := chain(t, root, tars)

	// The top CIM's merged view is the layers stacked by the spec.
	for i := range dirs {
		want, got := model(t, tars[:i+1]), viewOf(t, cimlayer.CIMPath(dirs[i]))
		if _, ok := want["HIVES"]; !ok && got["HIVES"] == "dir" {
			delete(got, "HIVES") // made for the base layer's Hives/*_BASE
		}
		diffMaps(t, "merged view of "+dirs[i], want, got)
	}

	// Base: layout and Hives/*_BASE linked to the config hives, on disk and
	// in the CIM.
	if b, err := os.ReadFile(filepath.Join(dirs[0], "layout")); err != nil || string(b) != "vhd-with-hives\n" {
		t.Fatalf("layout on disk: %q, %v", b, err)
	}
	img, err := cimfs.Open(cimlayer.CIMPath(dirs[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for cfg, base := range map[string]string{"SYSTEM": "SYSTEM_BASE", "DEFAULT": "DEFAULTUSER_BASE", "SAM": "SAM_BASE"} {
		a, _ := os.Stat(filepath.Join(dirs[0], "Files/Windows/System32/config", cfg))
		b, err := os.Stat(filepath.Join(dirs[0], "Hives", base))
		if err != nil || !os.SameFile(a, b) {
			t.Errorf("Hives/%s is not a hard link to config/%s on disk: %v", base, cfg, err)
		}
		fa, err := img.Stat("Files/Windows/System32/config/" + cfg)
		if err != nil {
			t.Fatal(err)
		}
		fb, err := img.Stat("Hives/" + base)
		if err != nil || fa.ID != fb.ID {
			t.Errorf("Hives/%s is not a hard link to config/%s in the CIM: %v", base, cfg, err)
		}
	}

	// Children: _BASE = merge(nearest ancestor's _BASE, delta), valid for
	// hivexregedit; the top CIM holds the top layer's.
	testutil.NeedTool(t, "hivexregedit")
	prev := filepath.Join(dirs[0], "Hives")
	for _, d := range dirs[1:] {
		for _, name := range synth.HiveNames {
			base := map[string]string{"DEFAULT": "DEFAULTUSER"}[name]
			if base == "" {
				base = name
			}
			base += "_BASE"
			want, err := regf.Merge(readHive(t, filepath.Join(prev, base)), readHive(t, filepath.Join(d, "Hives", synth.DeltaNames[name])))
			if err != nil {
				t.Fatal(err)
			}
			wantRaw, err := want.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got := filepath.Join(d, "Hives", base)
			gotRaw, err := os.ReadFile(got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(gotRaw, wantRaw) {
				t.Errorf("%s differs from the merge of its ancestor's base and delta", got)
			}
			out := testutil.Run(t, "hivexregedit", "--export", got, `\`)
			if name == "SYSTEM" && !bytes.Contains(out, []byte("ComputerName")) {
				t.Errorf("hivexregedit export of %s lacks ComputerName:\n%.300s", got, out)
			}
		}
		prev = filepath.Join(d, "Hives")
	}

	// Std files: every file of each folder is in its CIM, byte for byte.
	for _, d := range dirs {
		n := 0
		img, err := cimfs.Open(cimlayer.CIMPath(d))
		if err != nil {
			t.Fatal(err)
		}
		err = filepath.WalkDir(d, func(p string, de os.DirEntry, err error) error {
			if err != nil || de.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(d, p)
			disk, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			r, err := img.Open(filepath.ToSlash(rel))
			if err != nil {
				return err
			}
			inCim, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			if !bytes.Equal(disk, inCim) {
				t.Errorf("%s: folder and CIM differ", p)
			}
			n++
			return nil
		})
		img.Close()
		if err != nil {
			t.Fatal(err)
		}
		min := 10 // 5 deltas + 5 bases
		if d == dirs[0] {
			min = 5 + 5 + 1 + 4 // config hives, bases, layout, UVM hives + BCD + bootmgfw
		}
		if n < min {
			t.Errorf("%s holds %d std files, want at least %d", d, n, min)
		}
	}

	// Export → import gives the same CIMs.
	root2 := t.TempDir()
	var exported [][]byte
	for i, d := range dirs {
		parent := ""
		if i > 0 {
			parent = cimlayer.CIMPath(dirs[i-1])
		}
		var b bytes.Buffer
		if _, err := cimlayer.Export(context.Background(), &b, cimlayer.CIMPath(d), parent); err != nil {
			t.Fatal(err)
		}
		exported = append(exported, b.Bytes())
	}
	if len(exported[1]) >= len(exported[0])/2 {
		t.Errorf("child export is %d bytes, base %d: the child should hold only its changes", len(exported[1]), len(exported[0]))
	}
	dirs2 := chain(t, root2, exported)
	for i := range dirs {
		diffMaps(t, "re-imported "+dirs2[i], dump(t, cimlayer.CIMPath(dirs[i])), dump(t, cimlayer.CIMPath(dirs2[i])))
	}
}

// TestUtilityVMHook checks the hook runs for a base layer with
// UtilityVM/Files before the commit, and its edits land in the CIM.
func TestUtilityVMHook(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "base")
	calls := 0
	opts := &cimlayer.Options{UtilityVM: func(ctx context.Context, layerDir string) ([]string, error) {
		calls++
		bcd := filepath.Join(layerDir, "UtilityVM/Files/EFI/Microsoft/Boot/BCD")
		if err := os.WriteFile(bcd, []byte("edited"), 0o644); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(layerDir, "UtilityVM/SystemTemplate.vhdx"), []byte("disk"), 0o644); err != nil {
			return nil, err
		}
		return []string{"UtilityVM/Files/EFI/Microsoft/Boot/BCD", "UtilityVM/SystemTemplate.vhdx"}, nil
	}}
	if _, err := cimlayer.Import(context.Background(), bytes.NewReader(baseTar(t)), dir, cimlayer.CIMPath(dir), nil, opts); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Fatalf("hook ran %d times", calls)
	}
	img, err := cimfs.Open(cimlayer.CIMPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	r, err := img.Open("UtilityVM/Files/EFI/Microsoft/Boot/BCD")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(r); string(b) != "edited" {
		t.Errorf("BCD in the CIM is %q, want the hook's edit", b)
	}
	if _, err := img.Stat("UtilityVM/SystemTemplate.vhdx"); err == nil {
		t.Error("a folder-only file went into the CIM")
	}

	// A failing hook leaves nothing.
	dir2 := filepath.Join(root, "base2")
	opts.UtilityVM = func(ctx context.Context, layerDir string) ([]string, error) { return nil, errors.New("boom") }
	_, err = cimlayer.Import(context.Background(), bytes.NewReader(baseTar(t)), dir2, cimlayer.CIMPath(dir2), nil, opts)
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("err = %v", err)
	}
	assertTree(t, root, []string{"base", "cim-layers"}, cimFiles(t, cimlayer.CIMPath(dir)))
}

// cimFiles lists the files of one committed CIM (cim + regions + objectids).
func cimFiles(t *testing.T, cimPath string) []string {
	ents, err := os.ReadDir(filepath.Dir(cimPath))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// assertTree checks root holds exactly top and its cim-layers dir exactly
// cims (nil: no cim-layers dir).
func assertTree(t *testing.T, root string, top, cims []string) {
	t.Helper()
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, top) {
		t.Errorf("%s holds %q, want %q", root, got, top)
	}
	if cims == nil {
		return
	}
	ents, err = os.ReadDir(filepath.Join(root, "cim-layers"))
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, cims) {
		t.Errorf("cim-layers holds %q, want %q", got, cims)
	}
}

type rawEntry struct {
	hdr  tar.Header
	data string
}

func rawTar(t *testing.T, ents []rawEntry) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		h := e.hdr
		h.Format = tar.FormatPAX
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		h.Size = int64(len(e.data))
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func dirEnt(name string) rawEntry {
	return rawEntry{hdr: tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: 0o40755}}
}

func TestBadInput(t *testing.T) {
	base := baseTar(t)
	deltaName := "Hives/" + synth.DeltaNames["SAM"]
	cases := []struct {
		name, want string // want: the entry the error must name
		tar        []byte
		child      bool // import on top of a base layer
		prepare    func(t *testing.T, parent string)
	}{
		{"broken PAX value", "Files/bad.txt", rawTar(t, []rawEntry{dirEnt("Files"),
			{hdr: tar.Header{Name: "Files/bad.txt", PAXRecords: map[string]string{"MSWINDOWS.fileattr": "12abc"}}, data: "x"}}), false, nil},
		{"names equal but for case", "Files/A.TXT", rawTar(t, []rawEntry{dirEnt("Files"),
			{hdr: tar.Header{Name: "Files/a.txt"}, data: "x"}, {hdr: tar.Header{Name: "Files/A.TXT"}, data: "y"}}), false, nil},
		{"oversize name", "Files/" + strings.Repeat("n", 80), // long names are shortened in messages
			rawTar(t, []rawEntry{dirEnt("Files"),
				{hdr: tar.Header{Name: "Files/" + strings.Repeat("n", 256)}, data: "x"}}), false, nil},
		{"truncated tar", "Files/", base[:len(base)/2], false, nil},
		{"whiteout in a base layer", "Files/.wh.gone", rawTar(t, []rawEntry{dirEnt("Files"),
			{hdr: tar.Header{Name: "Files/.wh.gone"}}}), false, nil},
		{"base layer without hives", "Files/Windows/System32/config/DEFAULT", rawTar(t, []rawEntry{dirEnt("Files"),
			{hdr: tar.Header{Name: "Files/x"}, data: "x"}}), false, nil},
		{"generated hive base in a tar", "Hives/SYSTEM_BASE", rawTar(t, []rawEntry{dirEnt("Files"), dirEnt("Hives"),
			{hdr: tar.Header{Name: "Hives/SYSTEM_BASE"}, data: "x"}}), true, nil},
		{"delta without any base", deltaName, childTar(t, 5), true, func(t *testing.T, parent string) {
			if err := os.Remove(filepath.Join(parent, "Hives", "SAM_BASE")); err != nil {
				t.Fatal(err)
			}
		}},
		{"ADS on a hive", "Files/Windows/System32/config/SAM:zone", rawTar(t, []rawEntry{dirEnt("Files"), dirEnt("Files/Windows"),
			dirEnt("Files/Windows/System32"), dirEnt("Files/Windows/System32/config"),
			{hdr: tar.Header{Name: "Files/Windows/System32/config/SAM"}, data: "x"},
			{hdr: tar.Header{Name: "Files/Windows/System32/config/SAM:zone"}, data: "y"}}), false, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			var parents, top, cims []string
			if c.child {
				p := filepath.Join(root, "base")
				importTar(t, base, p)
				if c.prepare != nil {
					c.prepare(t, p)
				}
				parents, top, cims = []string{p}, []string{"base", "cim-layers"}, cimFiles(t, cimlayer.CIMPath(p))
			}
			dir := filepath.Join(root, "new")
			_, err := cimlayer.Import(context.Background(), bytes.NewReader(c.tar), dir, cimlayer.CIMPath(dir), parents, nil)
			if err == nil {
				t.Fatal("import succeeded")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not name %q", err, c.want)
			}
			assertTree(t, root, top, cims)
		})
	}
}

func TestCancelLeavesNothing(t *testing.T) {
	root := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	opts := &cimlayer.Options{Progress: func(p cimlayer.Progress) {
		if n++; n == 1 {
			cancel()
		}
	}}
	big := synth.Options{Seed: 3, Files: 400, Bytes: 40 << 20}
	var b bytes.Buffer
	if _, err := synth.Base(&b, big); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "l")
	_, err := cimlayer.Import(ctx, &b, dir, cimlayer.CIMPath(dir), nil, opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	assertTree(t, root, nil, nil)
}

func TestLayerDirRules(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "l")
	if err := os.MkdirAll(filepath.Join(dir, "junk"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := cimlayer.Import(context.Background(), bytes.NewReader(baseTar(t)), dir, cimlayer.CIMPath(dir), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("non-empty layer folder: err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "junk")); err != nil {
		t.Error("a refused import touched the existing folder")
	}
	if _, err := cimlayer.Import(context.Background(), bytes.NewReader(baseTar(t)), dir, filepath.Join(root, "x.vhd"), nil, nil); err == nil {
		t.Error("a CIM path not ending in .cim was accepted")
	}
	if got := cimlayer.CIMPath("/s/layers/abc"); got != "/s/layers/cim-layers/abc.cim" {
		t.Errorf("CIMPath = %s", got)
	}
}

// newestWrite is the newest last-write time of a layer tar's entries
// (whiteouts aside), read with the tar reader.
func newestWrite(t *testing.T, tarb []byte) time.Time {
	t.Helper()
	r := wintar.NewReader(bytes.NewReader(tarb))
	var newest time.Time
	for {
		e, err := r.Next()
		if err == io.EOF {
			return newest
		}
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind != wintar.KindWhiteout && e.LastWriteTime.After(newest) {
			newest = e.LastWriteTime
		}
	}
}

// The entries Import makes itself (the Hives directory, layout, the merged
// hive bases of a child) date from their layer, the newest last-write time
// of its tar, as the files beside them do; not the zero time.
func TestGeneratedEntriesHaveLayerTime(t *testing.T) {
	tars := [][]byte{baseTar(t), childTar(t, 5)}
	dirs := chain(t, t.TempDir(), tars)
	made := [][]string{{"Hives", "layout"}, {"Hives/SYSTEM_BASE", "Hives/SOFTWARE_BASE", "Hives/DEFAULTUSER_BASE"}}
	for i, d := range dirs {
		want := newestWrite(t, tars[i])
		if want.Year() < 2000 {
			t.Fatalf("layer %d: newest entry time %v", i, want)
		}
		img, err := cimfs.Open(cimlayer.CIMPath(d))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range made[i] {
			f, err := img.Stat(p)
			if err != nil {
				t.Errorf("layer %d: %s: %v", i, p, err)
				continue
			}
			for name, got := range map[string]time.Time{"creation": f.CreationTime, "last write": f.LastWriteTime,
				"change": f.ChangeTime, "last access": f.LastAccessTime} {
				if !got.Equal(want) {
					t.Errorf("layer %d: %s %s time %v, want the layer's %v", i, p, name, got, want)
				}
			}
		}
		img.Close()
	}
}
