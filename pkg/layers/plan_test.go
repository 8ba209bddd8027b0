package layers

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func layerFolders(t *testing.T, n int) Layers {
	t.Helper()
	root := t.TempDir()
	var l Layers
	for i := 0; i < n; i++ {
		f := filepath.Join(root, "layers", strings.Repeat("0", 60)+string(rune('a'+i%26))+strings.Repeat("x", i/26))
		os.MkdirAll(f, 0o755)
		os.WriteFile(filepath.Join(f, LayerFile), nil, 0o644)
		l.ReadOnly = append(l.ReadOnly, f)
	}
	l.Scratch = filepath.Join(root, "scratch")
	os.MkdirAll(l.Scratch, 0o755)
	os.WriteFile(filepath.Join(l.Scratch, ScratchFile), nil, 0o644)
	return l
}

// The plan is the one description both paths execute: the same overlay
// shape whatever the mount points are.
func TestPlanOverlay(t *testing.T) {
	l := layerFolders(t, 2)
	p, err := NewPlan("c1", l)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Layers) != 2 || p.ScratchIsVHDX() || filepath.Base(p.Scratch) != ScratchFile {
		t.Fatalf("plan %+v", p)
	}
	host, err := p.Overlay([]string{"/h/l1", "/h/l0"}, "/h/s")
	if err != nil {
		t.Fatal(err)
	}
	guest, err := p.Overlay([]string{"/run/mounts/pmem/0", "/run/mounts/scsi/m1"}, "/run/mounts/scsi/m2")
	if err != nil {
		t.Fatal(err)
	}
	if host.Lowers[0] != "/h/l1/content" || host.Upper != "/h/s/scratch/c1/upper" || host.Work != "/h/s/scratch/c1/work" {
		t.Errorf("host overlay %+v", host)
	}
	if guest.Lowers[1] != "/run/mounts/scsi/m1/content" || guest.Upper != "/run/mounts/scsi/m2/scratch/c1/upper" {
		t.Errorf("guest overlay %+v", guest)
	}
	if _, err := p.Overlay([]string{"/one"}, "/s"); err == nil {
		t.Error("a mount count that does not match the layers was accepted")
	}
}

func TestPlanRefusesBadInput(t *testing.T) {
	l := layerFolders(t, 1)
	if _, err := NewPlan("../x", l); err == nil || !strings.Contains(err.Error(), "invalid container id") {
		t.Errorf("bad id: %v", err)
	}
	if _, err := NewPlan("c", Layers{Scratch: l.Scratch}); !errors.Is(err, ErrTooFewLayers) {
		t.Errorf("no layers: %v", err)
	}
	missing := Layers{ReadOnly: []string{filepath.Join(t.TempDir(), "gone")}, Scratch: l.Scratch}
	if _, err := NewPlan("c", missing); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("missing layer image: %v", err)
	}
	// Too many layers for one overlay: refused with the container named.
	p, err := NewPlan("many", layerFolders(t, 120))
	if err != nil {
		t.Fatal(err)
	}
	mounts := make([]string, len(p.Layers))
	for i := range mounts {
		mounts[i] = "/var/lib/layervisor/mounts/shared/" + strings.Repeat("f", 40)
	}
	if _, err := p.Overlay(mounts, "/s"); err == nil || !strings.Contains(err.Error(), "container many") || !strings.Contains(err.Error(), "too long") {
		t.Errorf("too many layers: %v", err)
	}
}
