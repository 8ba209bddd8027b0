package vhd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

func TestFooterRoundTrip(t *testing.T) {
	f, err := NewFixedFooter(64 << 20)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := f.MarshalBinary()
	g, err := ParseFooter(b)
	if err != nil {
		t.Fatal(err)
	}
	if g.CurrentSize != 64<<20 || g.DiskType != DiskTypeFixed || g.Geometry != f.Geometry {
		t.Fatalf("round trip mismatch: %+v", g)
	}
	b[100] ^= 1
	if _, err := ParseFooter(b); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("corrupt footer accepted: %v", err)
	}
	if _, err := ParseFooter(make([]byte, 512)); err != ErrNoFooter {
		t.Fatalf("want ErrNoFooter, got %v", err)
	}
}

// qemu-img writes its own fixed VHDs with the same CHS algorithm: our parser
// must read its footers and our geometry must agree with its own.
func TestGeometryMatchesQemuImg(t *testing.T) {
	qemuImg := needQemuImg(t)
	for _, size := range []int64{10 << 20, 1 << 30, 3<<30 + 7*512, 40 << 30, 200 << 30} {
		p := filepath.Join(t.TempDir(), "q.vhd")
		out, err := exec.Command(qemuImg, "create", "-q", "-f", "vpc", "-o", "subformat=fixed", p, strconv.FormatInt(size, 10)).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img create: %v\n%s", err, out)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		ft, err := ReadFooter(f, st.Size())
		f.Close()
		if err != nil {
			t.Fatalf("size %d: our parser rejects qemu-img's footer: %v", size, err)
		}
		// Without force_size qemu rounds the size up to what the CHS
		// geometry addresses, so compare geometries at qemu's size.
		if ft.CurrentSize < uint64(size) {
			t.Errorf("size %d: footer says %d", size, ft.CurrentSize)
		}
		if got := GeometryFor(int64(ft.CurrentSize)); got != ft.Geometry {
			t.Errorf("size %d: our geometry %+v, qemu-img %+v", size, got, ft.Geometry)
		}
	}
}

func needQemuImg(t *testing.T) string {
	t.Helper()
	return testutil.NeedTool(t, "qemu-img")
}

// qemu-img is an independent reader of the footer.
func TestQemuImgAcceptsFooter(t *testing.T) {
	qemuImg := needQemuImg(t)
	p := filepath.Join(t.TempDir(), "disk.vhd")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(32 << 20); err != nil {
		t.Fatal(err)
	}
	if err := AppendFixedFooter(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command(qemuImg, "info", "--output=json", "--image-opts",
		"driver=vpc,force_size_calc=current_size,file.filename="+p).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"virtual-size": 33554432`) {
		t.Fatalf("qemu-img reports wrong size:\n%s", out)
	}
	out, err = exec.Command(qemuImg, "info", "--output=json", "-f", "vpc", p).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info (geometry): %v\n%s", err, out)
	}
	if strings.Contains(string(out), `"virtual-size": 0`) {
		t.Fatalf("geometry not honoured:\n%s", out)
	}
}
