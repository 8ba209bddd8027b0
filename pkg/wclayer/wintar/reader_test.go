package wintar_test

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// hdr is a raw tar entry for building tars by hand (not with our Writer).
type hdr struct {
	name, link string
	typ        byte
	pax        map[string]string
	data       string
}

func file(name string, pax ...string) hdr {
	h := hdr{name: name, typ: tar.TypeReg, pax: map[string]string{}}
	for i := 0; i+1 < len(pax); i += 2 {
		h.pax[pax[i]] = pax[i+1]
	}
	return h
}

func dir(name string) hdr { return hdr{name: name, typ: tar.TypeDir} }

func rawTar(t *testing.T, hs ...hdr) []byte { return rawTarTB(t, hs...) }

func rawTarTB(t testing.TB, hs ...hdr) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hs {
		th := &tar.Header{Name: h.name, Linkname: h.link, Typeflag: h.typ, Size: int64(len(h.data)),
			Mode: 0o644, ModTime: time.Unix(1620475200, 0), Format: tar.FormatPAX, PAXRecords: h.pax}
		// Go writes atime and ctime from the header fields, not PAXRecords.
		for k, f := range map[string]*time.Time{"atime": &th.AccessTime, "ctime": &th.ChangeTime} {
			if v, ok := h.pax[k]; ok {
				sec, frac, _ := strings.Cut(v, ".")
				s, _ := strconv.ParseInt(sec, 10, 64)
				ns, _ := strconv.ParseInt((frac + "000000000")[:9], 10, 64)
				*f = time.Unix(s, ns)
				delete(th.PAXRecords, k)
			}
		}
		if err := tw.WriteHeader(th); err != nil {
			t.Fatalf("%s: %v", h.name, err)
		}
		if _, err := io.WriteString(tw, h.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// entry is an entry and its data, as read.
type entry struct {
	*wintar.Entry
	data string
}

func readAll(r io.Reader) ([]entry, error) {
	tr := wintar.NewReader(r)
	var out []entry
	for {
		e, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return out, err
		}
		out = append(out, entry{e, string(data)})
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// TestEveryPAXKey reads one entry per Windows PAX key and checks each
// decoded field.
func TestEveryPAXKey(t *testing.T) {
	sd, err := wintar.SDDLToSecurityDescriptor("O:BAG:SYD:(A;;FA;;;BA)(A;;FA;;;SY)(A;;0x1200a9;;;BU)")
	if err != nil {
		t.Fatal(err)
	}
	a := file("Files/a.txt", "MSWINDOWS.fileattr", "33", "MSWINDOWS.rawsd", b64(sd),
		"MSWINDOWS.xattr.$KERNEL.PURGE.ESBCACHE", b64([]byte{1, 2}), "MSWINDOWS.xattr.ABC", "",
		"LIBARCHIVE.creationtime", "1620475100.1234567", "atime", "1620475300.5", "ctime", "1620475400")
	a.data = "hello"
	sddl := file("Files/b.txt", "MSWINDOWS.sd", "O:BAG:SYD:(A;;FA;;;BA)(A;;FA;;;SY)(A;;0x1200a9;;;BU)")
	junction := hdr{name: "Files/j", typ: tar.TypeSymlink, link: `C:\Users`, pax: map[string]string{
		"MSWINDOWS.mountpoint": "1", "MSWINDOWS.fileattr": "1040"}}
	symlink := hdr{name: "Files/s", typ: tar.TypeSymlink, link: `a.txt`}
	link := hdr{name: "Files/h", typ: tar.TypeLink, link: "Files/a.txt"}
	got, err := readAll(bytes.NewReader(rawTar(t, dir("Files/"), a, sddl, junction, symlink, link)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 {
		t.Fatalf("read %d entries", len(got))
	}
	if d := got[0]; d.Kind != wintar.KindDir || d.Path != "Files" || d.Attributes != wintar.AttrDirectory {
		t.Errorf("directory: %+v", d.Entry)
	}
	e := got[1]
	if e.Kind != wintar.KindFile || e.Attributes != 33 || e.Size != 5 || e.data != "hello" {
		t.Errorf("file: %+v %q", e.Entry, e.data)
	}
	if !bytes.Equal(e.SecurityDescriptor, sd) {
		t.Errorf("rawsd: %x", e.SecurityDescriptor)
	}
	wantEAs := []wintar.EA{{Name: "$KERNEL.PURGE.ESBCACHE", Value: []byte{1, 2}}, {Name: "ABC", Value: []byte{}}}
	if !reflect.DeepEqual(e.EAs, wantEAs) {
		t.Errorf("EAs %+v", e.EAs)
	}
	for what, pair := range map[string][2]time.Time{
		"creation": {e.CreationTime, time.Unix(1620475100, 123456700)},
		"write":    {e.LastWriteTime, time.Unix(1620475200, 0)},
		"access":   {e.LastAccessTime, time.Unix(1620475300, 5e8)},
		"change":   {e.ChangeTime, time.Unix(1620475400, 0)},
	} {
		if !pair[0].Equal(pair[1]) {
			t.Errorf("%s time %v, want %v", what, pair[0], pair[1])
		}
	}
	if b := got[2]; !bytes.Equal(b.SecurityDescriptor, sd) || !b.CreationTime.Equal(b.LastWriteTime) || b.Attributes != 0 {
		t.Errorf("SDDL entry: %+v (creation time defaults to write time, attributes to 0)", b.Entry)
	}
	if j := got[3]; j.Kind != wintar.KindJunction || j.Target != `C:\Users` || j.Attributes != 1040 ||
		!bytes.Equal(j.Reparse, wintar.EncodeReparse(`C:\Users`, true)) {
		t.Errorf("junction: %+v", j.Entry)
	}
	if s := got[4]; s.Kind != wintar.KindSymlink || !bytes.Equal(s.Reparse, wintar.EncodeReparse("a.txt", false)) {
		t.Errorf("symlink: %+v", s.Entry)
	}
	if h := got[5]; h.Kind != wintar.KindHardlink || h.Target != "Files/a.txt" {
		t.Errorf("hard link: %+v", h.Entry)
	}
}

// TestStreamSpellings reads alternate data streams named both ways.
func TestStreamSpellings(t *testing.T) {
	a := file("Files/a.txt")
	a.data = "main"
	s1, s2 := file("Files/a.txt:Zone.Identifier"), file("Files/a.txt:other:$DATA")
	s1.data, s2.data = "zone", "other"
	got, err := readAll(bytes.NewReader(rawTar(t, dir("Files"), a, s1, s2)))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct{ stream, data string }{{"Zone.Identifier", "zone"}, {"other", "other"}} {
		e := got[2+i]
		if e.Kind != wintar.KindStream || e.Path != "Files/a.txt" || e.Stream != want.stream || e.data != want.data {
			t.Errorf("stream %d: %+v %q", i, e.Entry, e.data)
		}
	}
	// Written back, both use the short spelling.
	var b bytes.Buffer
	w := wintar.NewWriter(&b)
	for _, e := range got {
		if err := w.WriteEntry(e.Entry, strings.NewReader(e.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&b)
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	if want := []string{"Files", "Files/a.txt", "Files/a.txt:Zone.Identifier", "Files/a.txt:other"}; !reflect.DeepEqual(names, want) {
		t.Errorf("written names %q, want %q", names, want)
	}
}

// TestBadInput feeds tars that break one rule each; every one must fail
// with an EntryError naming the entry.
func TestBadInput(t *testing.T) {
	long := strings.Repeat("x", 256)
	emoji := strings.Repeat("\U0001F600", 128)                          // 128 runes, 256 UTF-16 units
	deep := "Files" + strings.Repeat("/"+strings.Repeat("y", 200), 165) // > 32767 units
	withData := func(h hdr, d string) hdr { h.data = d; return h }
	sym := func(name, target string, pax ...string) hdr {
		h := file(name, pax...)
		h.typ, h.link = tar.TypeSymlink, target
		return h
	}
	hard := func(name, target string) hdr { return hdr{name: name, typ: tar.TypeLink, link: target} }
	a := file("Files/a")
	for _, tc := range []struct {
		name  string
		tar   []hdr
		entry string
		why   string
	}{
		{"attr not a number", []hdr{file("Files/x", "MSWINDOWS.fileattr", "abc")}, "Files/x", "MSWINDOWS.fileattr"},
		{"attr negative", []hdr{file("Files/x", "MSWINDOWS.fileattr", "-1")}, "Files/x", "decimal"},
		{"attr too big", []hdr{file("Files/x", "MSWINDOWS.fileattr", "4294967296")}, "Files/x", "32-bit"},
		{"attr dir on file", []hdr{file("Files/x", "MSWINDOWS.fileattr", "16")}, "Files/x", "FILE_ATTRIBUTE_DIRECTORY"},
		{"rawsd not base64", []hdr{file("Files/x", "MSWINDOWS.rawsd", "!!")}, "Files/x", "base64"},
		{"rawsd short", []hdr{file("Files/x", "MSWINDOWS.rawsd", b64([]byte{1, 0, 0, 0x80}))}, "Files/x", "shorter"},
		{"rawsd bad owner", []hdr{file("Files/x", "MSWINDOWS.rawsd", b64(append([]byte{1, 0, 0, 0x80, 0xff}, make([]byte, 15)...)))}, "Files/x", "owner offset"},
		{"sddl unsupported", []hdr{file("Files/x", "MSWINDOWS.sd", "O:DAG:DA")}, "Files/x", `token "DA"`},
		{"both sd", []hdr{file("Files/x", "MSWINDOWS.sd", "O:BA", "MSWINDOWS.rawsd", "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAhAgAAAQIAAAAAAAUgAAAAIQIAAA==")}, "Files/x", "both"},
		{"mountpoint on file", []hdr{file("Files/x", "MSWINDOWS.mountpoint", "1")}, "Files/x", "only a symlink"},
		{"mountpoint value", []hdr{sym("Files/x", `C:\x`, "MSWINDOWS.mountpoint", "yes")}, "Files/x", `"1"`},
		{"xattr not base64", []hdr{file("Files/x", "MSWINDOWS.xattr.A", "%%")}, "Files/x", "base64"},
		{"xattr name long", []hdr{file("Files/x", "MSWINDOWS.xattr."+long, "")}, "Files/x", "EA name"},
		{"xattr twice", []hdr{file("Files/x", "MSWINDOWS.xattr.a", "", "MSWINDOWS.xattr.A", "")}, "Files/x", "twice"},
		{"creationtime", []hdr{file("Files/x", "LIBARCHIVE.creationtime", "12.x")}, "Files/x", "LIBARCHIVE.creationtime"},
		{"creationtime empty", []hdr{file("Files/x", "LIBARCHIVE.creationtime", "")}, "Files/x", "seconds"},
		{"unknown key", []hdr{file("Files/x", "MSWINDOWS.createtime", "1")}, "Files/x", "unknown"},
		{"dotdot", []hdr{file("Files/../x")}, "Files/../x", `".."`},
		{"leading dotdot", []hdr{file("../Files/x")}, "../Files/x", `".."`},
		{"absolute", []hdr{file("/Files/x")}, "/Files/x", "absolute"},
		{"drive", []hdr{file("C:/Files/x")}, "C:/Files/x", "absolute"},
		{"backslash", []hdr{file(`Files\x`)}, `Files\x`, "backslash"},
		{"wrong root", []hdr{file("Windows/x")}, "Windows/x", "outside"},
		{"uvm not Files", []hdr{file("UtilityVM/Other/x")}, "UtilityVM/Other/x", "outside"},
		{"hive subdir", []hdr{dir("Hives"), file("Hives/a/b")}, "Hives/a/b", "subdirectories"},
		{"hive symlink", []hdr{dir("Hives"), sym("Hives/x", "y")}, "Hives/x", "only hive files"},
		{"root is file", []hdr{file("Files")}, "Files", "root must be a directory"},
		{"forbidden char", []hdr{file("Files/a?b")}, "Files/a?b", "forbids"},
		{"component too long", []hdr{file("Files/" + long)}, "Files/" + long, "255"},
		{"component too long in UTF-16", []hdr{file("Files/" + emoji)}, "Files/" + emoji, "256 UTF-16 units"},
		{"path too long", []hdr{file(deep)}, deep, "32767"},
		{"case duplicate", []hdr{dir("Files/Dir"), file("Files/dir")}, "Files/dir", `"Files/Dir" but for case`},
		{"duplicate", []hdr{file("Files/x"), file("Files/x")}, "Files/x", "duplicate"},
		{"under a symlink", []hdr{sym("Files/l", `C:\`), file("Files/l/x")}, "Files/l/x", "is a symlink"},
		{"hard link dotdot", []hdr{a, hard("Files/h", "Files/../../etc/passwd")}, "Files/h", `".."`},
		{"hard link absolute", []hdr{a, hard("Files/h", "/etc/passwd")}, "Files/h", "absolute"},
		{"hard link other tree", []hdr{a, hard("Files/h", "UtilityVM/Files/a")}, "Files/h", "outside the link's tree"},
		{"hard link to hive", []hdr{a, hard("Files/h", "Hives/SYSTEM_Delta")}, "Files/h", "outside the link's tree"},
		{"hard link to dir", []hdr{dir("Files/d"), hard("Files/h", "Files/d")}, "Files/h", "is a directory"},
		{"hard link to deleted", []hdr{file("Files/.wh.a"), hard("Files/h", "Files/a")}, "Files/h", "deleted"},
		{"symlink escapes", []hdr{sym("Files/a/l", `..\..\x`)}, "Files/a/l", "leaves the layer"},
		{"junction relative", []hdr{sym("Files/j", `x`, "MSWINDOWS.mountpoint", "1")}, "Files/j", "not an absolute"},
		{"device", []hdr{{name: "Files/dev", typ: tar.TypeChar}}, "Files/dev", "no meaning"},
		{"fifo", []hdr{{name: "Files/fifo", typ: tar.TypeFifo}}, "Files/fifo", "no meaning"},
		{"opaque whiteout", []hdr{file("Files/d/.wh..wh..opq")}, "Files/d/.wh..wh..opq", "opaque"},
		{"whiteout with data", []hdr{withData(file("Files/.wh.a"), "x")}, "Files/.wh.a", "empty"},
		{"whiteout after entry", []hdr{a, file("Files/.wh.A")}, "Files/.wh.A", `deletes entry "Files/a"`},
		{"whiteout twice", []hdr{file("Files/.wh.a"), file("Files/.wh.a")}, "Files/.wh.a", "deleted twice"},
		{"whiteout in Hives", []hdr{file("Hives/.wh.SYSTEM_Delta")}, "Hives/.wh.SYSTEM_Delta", "only hive files"},
		{"stream without file", []hdr{file("Files/a:s")}, "Files/a:s", "not a file"},
		{"stream type", []hdr{a, file("Files/a:s:$INDEX_ALLOCATION")}, "Files/a:s:$INDEX_ALLOCATION", "$DATA"},
		{"stream with attrs", []hdr{a, file("Files/a:s", "MSWINDOWS.fileattr", "32")}, "Files/a:s", "carries no"},
		{"stream case dup", []hdr{a, file("Files/a:S"), file("Files/a:s")}, "Files/a:s", "but for case"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readAll(bytes.NewReader(rawTar(t, tc.tar...)))
			var ee *wintar.EntryError
			if !errors.As(err, &ee) || ee.Entry != tc.entry || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("got %v; want an error naming %q and saying %q", err, clip(tc.entry), tc.why)
			}
		})
	}
}

// TestSparseRefused: a PAX (GNU 1.0) sparse entry, which Go's tar reader
// would expand into its holes, is refused.
func TestSparseRefused(t *testing.T) {
	h := file("Files/x", "XXX.sparse.major", "1", "XXX.sparse.minor", "0", "XXX.sparse.realsize", "10")
	h.data = "1\n0\n10\n" + strings.Repeat("\x00", 512-7) + "0123456789"
	// Go's writer keeps GNU.sparse records to itself: rename them after.
	raw := bytes.ReplaceAll(rawTar(t, dir("Files"), h), []byte("XXX.sparse."), []byte("GNU.sparse."))
	_, err := readAll(bytes.NewReader(raw))
	var ee *wintar.EntryError
	if !errors.As(err, &ee) || ee.Entry != "Files/x" || !strings.Contains(err.Error(), "sparse entries") {
		t.Fatalf("got %v", err)
	}
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// TestTruncated cuts a valid tar at every kind of place: inside a header,
// inside data, and exactly at an entry boundary (no end marker).
func TestTruncated(t *testing.T) {
	a, b := file("Files/a"), file("Files/b")
	a.data, b.data = strings.Repeat("a", 700), "bb"
	full := rawTar(t, dir("Files"), a, b)
	if _, err := readAll(bytes.NewReader(full)); err != nil {
		t.Fatal(err)
	}
	// Offsets: each PAX-format header here is one 512-byte block (no PAX
	// records needed); Files/a's data takes two blocks.
	for _, tc := range []struct {
		cut   int
		entry string
	}{
		{0, "(first entry)"},   // nothing at all
		{100, "(first entry)"}, // inside the first header
		{512 + 200, "Files"},   // inside Files/a's header
		{1024 + 600, "Files/a"},
		{1024 + 1024, "Files/a"},      // boundary after Files/a: entry b and the end marker missing
		{2048 + 512 + 512, "Files/b"}, // after b, without the end marker
		{len(full) - 512, "Files/b"},  // half the end marker
	} {
		_, err := readAll(bytes.NewReader(full[:tc.cut]))
		var ee *wintar.EntryError
		if !errors.As(err, &ee) || ee.Entry != tc.entry || !strings.Contains(err.Error(), "truncated") {
			t.Errorf("cut at %d: got %v, want a truncation error naming %q", tc.cut, err, tc.entry)
		}
	}
}

// TestWriterRefuses: the writer checks entries as the reader does and
// refuses data of the wrong length.
func TestWriterRefuses(t *testing.T) {
	for _, tc := range []struct {
		e    wintar.Entry
		data string
		why  string
	}{
		{wintar.Entry{Path: "Files/../x", Kind: wintar.KindFile}, "", `".."`},
		{wintar.Entry{Path: "Files/x", Kind: wintar.KindFile, Size: 5}, "abc", "data ended after 3 of 5"},
		{wintar.Entry{Path: "Files/x", Kind: wintar.KindFile, SecurityDescriptor: []byte{1}}, "", "security descriptor"},
		{wintar.Entry{Path: "Files/x", Kind: wintar.KindHardlink, Target: "Files/x"}, "", "itself"},
		{wintar.Entry{Path: "Files/x", Kind: wintar.KindDir}, "", "without FILE_ATTRIBUTE_DIRECTORY"},
		{wintar.Entry{Path: "Files/x", Kind: wintar.KindFile, EAs: []wintar.EA{{Name: "a=b"}}}, "", "EA name"},
	} {
		w := wintar.NewWriter(io.Discard)
		err := w.WriteEntry(&tc.e, strings.NewReader(tc.data))
		var ee *wintar.EntryError
		if !errors.As(err, &ee) || ee.Entry != tc.e.Name() || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%+v: got %v, want %q", tc.e, err, tc.why)
		}
		if err2 := w.Close(); err2 == nil {
			t.Errorf("%+v: Close after a failed entry succeeded", tc.e)
		}
	}
}
