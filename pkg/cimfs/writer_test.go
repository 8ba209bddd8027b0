package cimfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	sdA = append([]byte{1, 0, 4, 0x80}, make([]byte, 16)...) // NULL-DACL SD hcsshim uses
	sdB = append([]byte{1, 0, 4, 0x84}, make([]byte, 16)...)
)

// ea builds a FILE_FULL_EA_INFORMATION chain of one entry.
func ea(name, value string) []byte {
	b := make([]byte, 8, 8+len(name)+1+len(value))
	b[5] = byte(len(name))
	binary.LittleEndian.PutUint16(b[6:], uint16(len(value)))
	b = append(append(append(b, name...), 0), value...)
	return b
}

// symlinkReparse builds a relative symlink REPARSE_DATA_BUFFER to target.
func symlinkReparse(target string) []byte {
	name := encodeName(target)
	nb := make([]byte, 2*len(name))
	for i, u := range name {
		binary.LittleEndian.PutUint16(nb[2*i:], u)
	}
	body := make([]byte, 12)
	binary.LittleEndian.PutUint16(body[2:], uint16(len(nb))) // substitute length
	binary.LittleEndian.PutUint16(body[4:], uint16(len(nb))) // print name offset
	binary.LittleEndian.PutUint16(body[6:], uint16(len(nb))) // print name length
	binary.LittleEndian.PutUint32(body[8:], 1)               // relative
	body = append(append(body, nb...), nb...)
	b := make([]byte, 8, 8+len(body))
	binary.LittleEndian.PutUint32(b, 0xA000000C)
	binary.LittleEndian.PutUint16(b[4:], uint16(len(body)))
	return append(b, body...)
}

func mustCommit(t *testing.T, w *Writer) {
	t.Helper()
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}

func mustOpen(t *testing.T, p string) *Image {
	t.Helper()
	img, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

func content(t *testing.T, img *Image, p string) string {
	t.Helper()
	r, err := img.Open(p)
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestWriteEveryFeature(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, "all.cim", nil)
	must(t, err)
	ts := time.Date(2024, 5, 6, 7, 8, 9, 123456700, time.UTC)
	dirInfo := FileInfo{Attributes: AttrDirectory | AttrHidden, CreationTime: ts, LastWriteTime: ts, SecurityDescriptor: sdA}
	must(t, w.Add("", FileInfo{Attributes: AttrDirectory, SecurityDescriptor: sdA}, nil))
	must(t, w.Add("Files", dirInfo, nil))
	fileInfo := FileInfo{Attributes: AttrReadonly | AttrArchive, CreationTime: ts, LastWriteTime: ts.Add(time.Hour),
		ChangeTime: ts.Add(2 * time.Hour), LastAccessTime: ts.Add(3 * time.Hour), SecurityDescriptor: sdB, EAs: ea("USER.X", "value")}
	must(t, w.Add(`Files\a.txt`, fileInfo, strings.NewReader("alpha")))
	must(t, w.Add("Files/B.txt", FileInfo{SecurityDescriptor: sdB}, strings.NewReader("bravo")))
	for _, n := range []string{"zeta", "Émile", "_x", "a", "ä"} {
		must(t, w.Add("Files/"+n, FileInfo{SecurityDescriptor: sdA}, strings.NewReader(n)))
	}
	must(t, w.Add("Files/link", FileInfo{ReparseData: symlinkReparse(`a.txt`)}, nil))
	big := bytes.Repeat([]byte("0123456789abcdef"), 1000) // 16000 bytes: data region
	must(t, w.Add("Files/big.bin", FileInfo{}, bytes.NewReader(big)))
	must(t, w.Add("Files/big-copy.bin", FileInfo{}, bytes.NewReader(big)))
	must(t, w.Add("Files/empty", FileInfo{}, nil))
	must(t, w.Add("Files/sub", FileInfo{Attributes: AttrDirectory}, nil))
	must(t, w.AddLink("Files/a.txt", "Files/sub/hard"))
	must(t, w.AddAlternateStream("Files/a.txt", "zone:$DATA", strings.NewReader("[ZoneTransfer]")))
	must(t, w.AddAlternateStream("Files/a.txt", "Alt", strings.NewReader("")))
	must(t, w.Remove("Files/zeta"))
	if err := w.Remove("Files/nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("remove missing: %v", err)
	}
	if err := w.Add("missing/x", FileInfo{}, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("add below missing dir: %v", err)
	}
	if err := w.Add("Files/bad:name", FileInfo{}, nil); err == nil {
		t.Error("name with ':' accepted")
	}
	if err := w.Add("Files/badea", FileInfo{EAs: []byte{1, 2, 3}}, nil); err == nil {
		t.Error("truncated EA accepted")
	}
	mustCommit(t, w)
	if err := w.Add("late", FileInfo{}, nil); err == nil {
		t.Error("Add after Commit accepted")
	}

	img := mustOpen(t, filepath.Join(dir, "all.cim"))
	if img.Regions() != 3 {
		t.Errorf("%d regions, want 3 (metadata, small data, data)", img.Regions())
	}
	var got []string
	must(t, img.Walk(func(p string, f *File) error { got = append(got, p); return nil }))
	// Upcased order: '_' (0x5F) sorts after letters, Ä (0xC4) before É (0xC9).
	want := "|Files|Files/a|Files/a.txt|Files/B.txt|Files/big-copy.bin|Files/big.bin|Files/empty|Files/link|Files/sub|Files/sub/hard|Files/_x|Files/ä|Files/Émile"
	if strings.Join(got, "|") != want {
		t.Errorf("tree\n%s\nwant\n%s", strings.Join(got, "|"), want)
	}
	a, err := img.Stat("files/A.TXT")
	must(t, err)
	if a.Attributes != AttrReadonly|AttrArchive || !a.CreationTime.Equal(ts) || !a.LastWriteTime.Equal(ts.Add(time.Hour)) ||
		!a.ChangeTime.Equal(ts.Add(2*time.Hour)) || !a.LastAccessTime.Equal(ts.Add(3*time.Hour)) || a.Size != 5 {
		t.Errorf("a.txt %+v", a)
	}
	info, err := a.Info()
	must(t, err)
	if !bytes.Equal(info.SecurityDescriptor, sdB) || !bytes.Equal(info.EAs, ea("USER.X", "value")) {
		t.Errorf("a.txt SD %x EAs %x", info.SecurityDescriptor, info.EAs)
	}
	if c := content(t, img, "Files/a.txt"); c != "alpha" {
		t.Errorf("a.txt = %q", c)
	}
	ss, err := a.Streams()
	must(t, err)
	if len(ss) != 2 || ss[0].Name != "Alt" || ss[1].Name != "zone" || ss[1].Size != 14 {
		t.Errorf("streams %+v", ss)
	}
	zr, err := a.OpenStream("ZONE")
	must(t, err)
	if zb, _ := io.ReadAll(zr); string(zb) != "[ZoneTransfer]" {
		t.Errorf("zone stream %q", zb)
	}
	// Hard links share one file record and list both names.
	h, err := img.Stat("Files/sub/hard")
	must(t, err)
	if h.ID != a.ID {
		t.Errorf("hard link FileID %d, original %d", h.ID, a.ID)
	}
	links, err := h.Links()
	must(t, err)
	filesDir, _ := img.Stat("Files")
	subDir, _ := img.Stat("Files/sub")
	if len(links) != 2 || links[0] != (Link{filesDir.ID, "a.txt"}) || links[1] != (Link{subDir.ID, "hard"}) {
		t.Errorf("links %v", links)
	}
	// Identical SDs (and contents) are stored once.
	b, _ := img.Stat("Files/B.txt")
	if b.rec.sd != a.rec.sd || filesDir.rec.sd == a.rec.sd {
		t.Errorf("SD offsets: a %v, B %v, Files %v", a.rec.sd, b.rec.sd, filesDir.rec.sd)
	}
	bc, _ := img.Stat("Files/big-copy.bin")
	bb, _ := img.Stat("Files/big.bin")
	if bc.rec.data.ro != bb.rec.data.ro || bb.rec.data.ro.index() != 2 || bb.rec.data.ro.offset()%pageSize != 0 {
		t.Errorf("big files at %v and %v", bb.rec.data.ro, bc.rec.data.ro)
	}
	if c := content(t, img, "Files/big.bin"); c != string(big) {
		t.Errorf("big.bin differs (%d bytes)", len(c))
	}
	if c := content(t, img, "Files/empty"); c != "" {
		t.Errorf("empty = %q", c)
	}
	l, _ := img.Stat("Files/link")
	rp, err := l.ReparseData()
	must(t, err)
	if l.ReparseTag != 0xA000000C || l.Attributes&AttrReparsePoint == 0 || !bytes.Equal(rp, symlinkReparse("a.txt")) {
		t.Errorf("link tag %#x attrs %#x reparse %x", l.ReparseTag, l.Attributes, rp)
	}
	if sub, _ := img.ReadDir("Files/sub"); len(sub) != 1 {
		t.Errorf("sub has %d entries", len(sub))
	}
	if _, err := img.Stat("Files/zeta"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("removed file: %v", err)
	}
	// Link tables are sorted by upcased name (not by bytes: "a" < "B.txt").
	tab, err := img.dirTable(filesDir)
	must(t, err)
	for i := 1; i < tab.n; i++ {
		if a, b := tab.entry(i-1).name, tab.entry(i).name; compareNames(defaultUpcase, a, b) >= 0 {
			t.Errorf("directory table not sorted: %q before %q", decodeName(a), decodeName(b))
		}
	}
	// The upcase table is stored and equals the generated one.
	up, err := img.UpcaseTable()
	must(t, err)
	if up['a'] != 'A' || up[0xe4] != 0xc4 || up[0xb5] != 0xb5 {
		t.Errorf("upcase table: a→%#x ä→%#x µ→%#x", up['a'], up[0xe4], up[0xb5])
	}
}

func TestCloseWithoutCommitLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, "x.cim", nil)
	must(t, err)
	must(t, w.Add("f", FileInfo{}, bytes.NewReader(make([]byte, 10000))))
	must(t, w.Close())
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
	// A CIM name taken before Commit: Commit fails, only the squatter stays.
	w, err = Create(dir, "y.cim", nil)
	must(t, err)
	must(t, w.Add("f", FileInfo{}, strings.NewReader("x")))
	must(t, os.WriteFile(filepath.Join(dir, "y.cim"), []byte("squat"), 0o644))
	if err := w.Commit(); !errors.Is(err, fs.ErrExist) {
		t.Errorf("commit over an existing .cim: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
	if _, err := Create(dir, "y.cim", nil); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Create over an existing .cim: %v", err)
	}
}
