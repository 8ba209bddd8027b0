package layerconv

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/pkg/vhd"
)

type entry struct {
	name, link string
	typ        byte
	body       string
	mode       int64
	dev        *[2]int64 // major, minor of a device (default 1:3)
}

func mkTar(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0)}
		if h.Mode == 0 {
			h.Mode = 0o644
			if e.typ == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if e.typ == tar.TypeChar || e.typ == tar.TypeBlock {
			h.Devmajor, h.Devminor = 1, 3
			if e.dev != nil {
				h.Devmajor, h.Devminor = e.dev[0], e.dev[1]
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func convert(t *testing.T, tarball []byte) (string, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layer.vhd")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Convert(context.Background(), OpenBytes(tarball), f)
	return p, err
}

var goodLayer = []entry{
	{name: "./", typ: tar.TypeDir},
	{name: "etc/", typ: tar.TypeDir},
	{name: "etc/hostname", typ: tar.TypeReg, body: "layervisor\n"},
	{name: "etc/hosts.link", typ: tar.TypeLink, link: "etc/hostname"},
	{name: "etc/rel", typ: tar.TypeSymlink, link: "../etc/hostname"},
	{name: "etc/abs", typ: tar.TypeSymlink, link: "/etc/hostname"},
	{name: "gone/", typ: tar.TypeDir},
	{name: "gone/.wh..wh..opq", typ: tar.TypeReg},
	{name: ".wh.deleted", typ: tar.TypeReg},
	{name: "fifo", typ: tar.TypeFifo},
}

// e2fsck is the independent judge of the images we write.
func TestConvertPassesE2fsck(t *testing.T) {
	p, err := convert(t, mkTar(t, goodLayer))
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(p)
	st, _ := f.Stat()
	ft, err := vhd.ReadFooter(f, st.Size())
	f.Close()
	if err != nil {
		t.Fatalf("layer image has no valid VHD footer: %v", err)
	}
	if int64(ft.CurrentSize) != st.Size()-vhd.FooterSize {
		t.Fatalf("footer size %d, image %d", ft.CurrentSize, st.Size()-vhd.FooterSize)
	}
	// e2fsck reads the ext4 part; the footer lies past the file system end.
	out, err := exec.Command("e2fsck", "-n", "-f", p).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -n -f failed: %v\n%s", err, out)
	}
	out, err = exec.Command("debugfs", "-R", "ls -l /content", p).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	for _, want := range []string{"etc", "gone", "deleted", "fifo"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("root listing lacks %q:\n%s", want, out)
		}
	}
	out, _ = exec.Command("debugfs", "-R", "ea_list /content/gone", p).CombinedOutput()
	if !strings.Contains(string(out), "trusted.overlay.opaque") {
		t.Errorf("opaque dir lacks overlay xattr:\n%s", out)
	}
	out, _ = exec.Command("debugfs", "-R", "stat /content/deleted", p).CombinedOutput()
	if !strings.Contains(string(out), "Type: character special") {
		t.Errorf("whiteout is not a 0:0 char device:\n%s", out)
	}
}

func TestConvertRefusesBadEntries(t *testing.T) {
	cases := map[string][]entry{
		"dotdot":           {{name: "../escape", typ: tar.TypeReg, body: "x"}},
		"nested dotdot":    {{name: "a/../../escape", typ: tar.TypeReg, body: "x"}},
		"absolute":         {{name: "/etc/passwd", typ: tar.TypeReg, body: "x"}},
		"hardlink escape":  {{name: "a", typ: tar.TypeLink, link: "../../etc/shadow"}},
		"hardlink abs":     {{name: "a", typ: tar.TypeLink, link: "/etc/shadow"}},
		"hardlink missing": {{name: "a", typ: tar.TypeLink, link: "nothere"}},
		"symlink escape":   {{name: "d/", typ: tar.TypeDir}, {name: "d/l", typ: tar.TypeSymlink, link: "../../etc"}},
		"under a file":     {{name: "a", typ: tar.TypeReg, body: "x"}, {name: "a/x", typ: tar.TypeReg, body: "x"}},
		"under a symlink":  {{name: "a", typ: tar.TypeSymlink, link: "b"}, {name: "a/x", typ: tar.TypeReg, body: "x"}},
		"hardlink to dir":  {{name: "d/", typ: tar.TypeDir}, {name: "l", typ: tar.TypeLink, link: "d"}},
		"hardlink to gone": {{name: "f", typ: tar.TypeReg}, {name: ".wh.f", typ: tar.TypeReg}, {name: "d/", typ: tar.TypeDir}, {name: "f/", typ: tar.TypeDir}, {name: "l", typ: tar.TypeLink, link: "f"}},
		"empty whiteout":   {{name: "d/", typ: tar.TypeDir}, {name: "d/.wh.", typ: tar.TypeReg}},
		"under a whiteout": {{name: ".wh.d/x", typ: tar.TypeReg}},
		// Devices are kept, but in the image a char device 0:0 is an
		// overlayfs whiteout, and tar2ext4 wraps numbers Linux cannot hold.
		"whiteout-like device": {{name: "dev/null", typ: tar.TypeChar, dev: &[2]int64{0, 0}}},
		"device major":         {{name: "dev/x", typ: tar.TypeChar, dev: &[2]int64{1 << 24, 0}}},
		"device minor":         {{name: "dev/x", typ: tar.TypeBlock, dev: &[2]int64{8, 1 << 20}}},
		"negative device":      {{name: "dev/x", typ: tar.TypeBlock, dev: &[2]int64{-1, 0}}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := convert(t, mkTar(t, entries))
			if !errors.Is(err, ErrInvalidLayer) {
				t.Fatalf("want ErrInvalidLayer, got %v", err)
			}
			bad := entries[len(entries)-1].name
			if !strings.Contains(err.Error(), bad) {
				t.Fatalf("error does not name entry %q: %v", bad, err)
			}
		})
	}
}

func TestConvertTruncatedTar(t *testing.T) {
	b := mkTar(t, []entry{{name: "big", typ: tar.TypeReg, body: strings.Repeat("x", 10000)}})
	if _, err := convert(t, b[:3000]); err == nil {
		t.Fatal("truncated tar converted without error")
	}
}

func TestConvertCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f, _ := os.Create(filepath.Join(t.TempDir(), "l"))
	defer f.Close()
	if _, err := Convert(ctx, OpenBytes(mkTar(t, goodLayer)), f); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}

// Overlayfs xattrs in a tar would let a layer make itself opaque or
// redirect lookups; only the converter may set them. Other xattrs stay.
func TestConvertDropsOverlayXattrs(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755, PAXRecords: map[string]string{
			"SCHILY.xattr.trusted.overlay.opaque":   "y",
			"SCHILY.xattr.trusted.overlay.redirect": "/etc",
			"SCHILY.xattr.user.keep":                "kept",
		}},
		{Name: "d/f", Typeflag: tar.TypeReg, Mode: 0o644, PAXRecords: map[string]string{
			"SCHILY.xattr.trusted.overlay.metacopy": "",
			"SCHILY.xattr.user.keep":                "kept",
		}},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	p, err := convert(t, buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"/content/d", "/content/d/f"} {
		out, err := exec.Command("debugfs", "-R", "ea_list "+f, p).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs: %v\n%s", err, out)
		}
		if strings.Contains(string(out), "trusted.overlay") || !strings.Contains(string(out), "user.keep") {
			t.Errorf("xattrs of %s: want user.keep only:\n%s", f, out)
		}
	}
}

// The image keeps lost+found at its root and the layer under ContentDir,
// with the metadata of the tar's "./" entry.
func TestConvertContentDir(t *testing.T) {
	p, err := convert(t, mkTar(t, []entry{{name: "./", typ: tar.TypeDir, mode: 0o750}, {name: "f", typ: tar.TypeReg, body: "f"}}))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("debugfs", "-R", "ls /", p).CombinedOutput()
	for _, want := range []string{"lost+found", ContentDir} {
		if !strings.Contains(string(out), want) {
			t.Errorf("image root lacks %s:\n%s", want, out)
		}
	}
	out, _ = exec.Command("debugfs", "-R", "stat /"+ContentDir, p).CombinedOutput()
	if !strings.Contains(string(out), "Mode:  0750") {
		t.Errorf("content dir does not have the root entry's mode 0750:\n%s", out)
	}
}

// openSeq opens the given tars in turn, one per call.
func openSeq(tars ...[]byte) Opener {
	n := 0
	return func() (io.ReadCloser, error) {
		b := tars[n]
		n++
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}

// errAtEnd returns b, then err instead of io.EOF, like a reader whose
// digest check fails.
type errAtEnd struct {
	r   *bytes.Reader
	err error
}

func (e *errAtEnd) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, e.err
	}
	return n, err
}

func TestConvertOpenerFailures(t *testing.T) {
	a := mkTar(t, []entry{{name: "f", typ: tar.TypeReg, body: "a"}})
	b := mkTar(t, []entry{{name: "g", typ: tar.TypeReg, body: "b"}})
	// The source is read once: a second open would see another tar.
	f, _ := os.Create(filepath.Join(t.TempDir(), "l"))
	defer f.Close()
	if _, err := Convert(context.Background(), openSeq(a, b), f); err != nil {
		t.Errorf("convert opened the source more than once: %v", err)
	}

	bad := errors.New("digest mismatch")
	f2, _ := os.Create(filepath.Join(t.TempDir(), "l"))
	defer f2.Close()
	open := func() (io.ReadCloser, error) { return io.NopCloser(&errAtEnd{bytes.NewReader(a), bad}), nil }
	if _, err := Convert(context.Background(), open, f2); !errors.Is(err, bad) {
		t.Errorf("error at the end of the stream: got %v, want %v", err, bad)
	}
}

// A layer that replaces one of its own entries is read a second time, for
// the two-pass conversion; any other layer is read once.
func TestConvertOpensAgainOnlyForTwoPass(t *testing.T) {
	once := mkTar(t, goodLayer)
	dup := mkTar(t, []entry{
		{name: "d/", typ: tar.TypeDir},
		{name: "d/f", typ: tar.TypeReg, body: "one"},
		{name: "d/f", typ: tar.TypeReg, body: "two"},
	})
	for name, tc := range map[string]struct {
		tar         []byte
		opens, ents int
	}{"plain": {once, 1, len(goodLayer)}, "replacing": {dup, 2, 3}} {
		opens := 0
		open := func() (io.ReadCloser, error) {
			opens++
			return OpenBytes(tc.tar)()
		}
		f, err := os.Create(filepath.Join(t.TempDir(), "l"))
		if err != nil {
			t.Fatal(err)
		}
		st, err := Convert(context.Background(), open, f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if opens != tc.opens || st.Entries != tc.ents {
			t.Errorf("%s: opened %d times, %d entries counted; want %d, %d", name, opens, st.Entries, tc.opens, tc.ents)
		}
	}
}

// The spool of the layer tar never outlives Convert: not after success, a
// failed check or cancellation.
func TestConvertLeavesNoSpool(t *testing.T) {
	good := mkTar(t, goodLayer)
	dup := mkTar(t, []entry{{name: "f", typ: tar.TypeReg, body: "1"}, {name: "f", typ: tar.TypeReg, body: "2"}})
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for name, tc := range map[string]struct {
		ctx     context.Context
		open    Opener
		wantErr bool
	}{
		"ok": {context.Background(), OpenBytes(good), false},
		"bad check": {context.Background(), func() (io.ReadCloser, error) {
			return io.NopCloser(&errAtEnd{bytes.NewReader(good), errors.New("bad digest")}), nil
		}, true},
		"cancelled":  {cancelled, OpenBytes(good), true},
		"two passes": {context.Background(), OpenBytes(dup), false},
		"two passes, bad check": {context.Background(), func() (io.ReadCloser, error) {
			return io.NopCloser(&errAtEnd{bytes.NewReader(dup), errors.New("bad digest")}), nil
		}, true},
	} {
		dir := t.TempDir()
		f, err := os.Create(filepath.Join(dir, "l"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = Convert(tc.ctx, tc.open, f)
		f.Close()
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: err = %v, want error %v", name, err, tc.wantErr)
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 1 || ents[0].Name() != "l" {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Errorf("%s: directory holds %v, want only the output", name, names)
		}
	}
}
