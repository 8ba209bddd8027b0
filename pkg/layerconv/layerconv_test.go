package layerconv

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
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
		if e.typ == tar.TypeChar {
			h.Devmajor, h.Devminor = 1, 3
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
	_, err = Convert(context.Background(), bytes.NewReader(tarball), f)
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
	out, err = exec.Command("debugfs", "-R", "ls -l /", p).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	for _, want := range []string{"etc", "gone", "deleted", "fifo"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("root listing lacks %q:\n%s", want, out)
		}
	}
	out, _ = exec.Command("debugfs", "-R", "ea_list /gone", p).CombinedOutput()
	if !strings.Contains(string(out), "trusted.overlay.opaque") {
		t.Errorf("opaque dir lacks overlay xattr:\n%s", out)
	}
	out, _ = exec.Command("debugfs", "-R", "stat /deleted", p).CombinedOutput()
	if !strings.Contains(string(out), "Type: character special") {
		t.Errorf("whiteout is not a 0:0 char device:\n%s", out)
	}
}

func TestConvertRefusesBadEntries(t *testing.T) {
	cases := map[string][]entry{
		"dotdot":           {{name: "../escape", typ: tar.TypeReg, body: "x"}},
		"nested dotdot":    {{name: "a/../../escape", typ: tar.TypeReg, body: "x"}},
		"absolute":         {{name: "/etc/passwd", typ: tar.TypeReg, body: "x"}},
		"device":           {{name: "dev/null", typ: tar.TypeChar}},
		"hardlink escape":  {{name: "a", typ: tar.TypeLink, link: "../../etc/shadow"}},
		"hardlink abs":     {{name: "a", typ: tar.TypeLink, link: "/etc/shadow"}},
		"hardlink missing": {{name: "a", typ: tar.TypeLink, link: "nothere"}},
		"symlink escape":   {{name: "d/", typ: tar.TypeDir}, {name: "d/l", typ: tar.TypeSymlink, link: "../../etc"}},
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
	if _, err := Convert(ctx, bytes.NewReader(mkTar(t, goodLayer)), f); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}
