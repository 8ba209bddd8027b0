package layers_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/fakeuvm"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/uvm/scsi"
)

// folders makes n layer folders (the fake only stats them) and a scratch.
func folders(t *testing.T, n int, sizes ...int64) layers.Layers {
	t.Helper()
	root := t.TempDir()
	var l layers.Layers
	for i := 0; i < n; i++ {
		d := filepath.Join(root, fmt.Sprintf("layer%d", i))
		os.MkdirAll(d, 0o755)
		size := int64(4096)
		if i < len(sizes) {
			size = sizes[i]
		}
		f, _ := os.Create(filepath.Join(d, layers.LayerFile))
		f.Truncate(size)
		f.Close()
		l.ReadOnly = append(l.ReadOnly, d)
	}
	l.Scratch = filepath.Join(root, "scratch")
	os.MkdirAll(l.Scratch, 0o755)
	os.WriteFile(filepath.Join(l.Scratch, layers.ScratchFile), nil, 0o644)
	return l
}

func TestUVMMountVPMemAndFallback(t *testing.T) {
	ctx := context.Background()
	f := fakeuvm.New()
	f.VPMemSlots = 1
	f.VPMemMax = 1 << 20
	l := folders(t, 3, 4096, 2<<20, 4096) // layer1 too large, layer2 no slot left
	m := layers.NewInUVM(f)
	rootfs, err := m.Mount(ctx, "c1", l, "/run/gcs/c/c1")
	if err != nil {
		t.Fatal(err)
	}
	if rootfs != "/run/gcs/c/c1/rootfs" {
		t.Fatalf("rootfs %q", rootfs)
	}
	lowers := f.Combined[rootfs]
	// The layers' content directories (the host's plan) under the guest
	// mount points of each attachment.
	want := []string{"/run/layers/p-layer0/content", "/run/mounts/scsi/layer1/content", "/run/mounts/scsi/layer2/content",
		"/run/mounts/scsi/scratch/scratch/c1/upper", "/run/mounts/scsi/scratch/scratch/c1/work"}
	if !slices.Equal(lowers, want) {
		t.Fatalf("overlay %v\nwant    %v", lowers, want)
	}
	// Partial unmount: SCSI first; the VPMEM layer stays attached.
	if err := m.Unmount(ctx, "c1", layers.UnmountSCSI); err != nil {
		t.Fatal(err)
	}
	if len(f.Combined) != 0 {
		t.Fatal("combined layers not removed first")
	}
	if f.Refs["vpmem:"+filepath.Join(l.ReadOnly[0], layers.LayerFile)] != 1 || f.Total() != 1 {
		t.Fatalf("after SCSI unmount refs = %v", f.Refs)
	}
	if !m.Mounted("c1") {
		t.Fatal("record dropped while VPMEM layer still attached")
	}
	if err := m.Unmount(ctx, "c1", layers.UnmountVPMem); err != nil {
		t.Fatal(err)
	}
	if f.Total() != 0 || m.Mounted("c1") {
		t.Fatalf("after VPMEM unmount refs = %v", f.Refs)
	}
	if err := m.Unmount(ctx, "c1", layers.UnmountAll); !errors.Is(err, layers.ErrNotMounted) {
		t.Fatalf("unmount of unmounted: %v", err)
	}
}

// With LayerDeviceSCSI every layer is a read-only SCSI disk opened as a
// layer (never probed), even when VPMEM has free slots.
func TestUVMLayersOnSCSI(t *testing.T) {
	ctx := context.Background()
	f := fakeuvm.New()
	f.VPMemSlots = 4
	f.VPMemMax = 1 << 30
	l := folders(t, 2, 4096, 4096)
	m := layers.NewInUVM(f)
	m.Device = layers.LayerDeviceSCSI
	rootfs, err := m.Mount(ctx, "c1", l, "/run/gcs/c/c1")
	if err != nil {
		t.Fatal(err)
	}
	for i := range l.ReadOnly {
		key := "scsi:" + filepath.Join(l.ReadOnly[i], layers.LayerFile)
		if f.Refs[key] != 1 || !f.ReadOnly[key] || f.Formats[key] != layers.LayerFormat {
			t.Fatalf("layer %d: refs %v read-only %v formats %v", i, f.Refs, f.ReadOnly, f.Formats)
		}
		if f.Refs["vpmem:"+filepath.Join(l.ReadOnly[i], layers.LayerFile)] != 0 {
			t.Fatalf("layer %d went to VPMEM", i)
		}
	}
	if len(f.Combined[rootfs]) != 4 {
		t.Fatalf("overlay %v", f.Combined[rootfs])
	}
	if err := m.Unmount(ctx, "c1", layers.UnmountAll); err != nil || f.Total() != 0 {
		t.Fatalf("unmount: %v, refs %v", err, f.Refs)
	}
	if _, err := layers.ParseLayerDevice("nvme"); err == nil || !strings.Contains(err.Error(), `"nvme"`) {
		t.Fatalf("bad device accepted or unnamed: %v", err)
	}
}

func TestUVMOtherVPMemErrorFails(t *testing.T) {
	ctx := context.Background()
	f := fakeuvm.New()
	l := folders(t, 2)
	// A good first layer, then a VPMEM error that is not a fallback reason.
	f.VPMemSlots = 64
	calls := 0
	f2 := &failAfter{UVM: f, n: 1, err: errors.New("qmp: device_add failed"), calls: &calls}
	m := layers.NewInUVM(f2)
	if _, err := m.Mount(ctx, "c1", l, "/run/c1"); err == nil || !strings.Contains(err.Error(), "device_add") {
		t.Fatalf("want VPMEM error, got %v", err)
	}
	if f.Total() != 0 {
		t.Fatalf("leaked attachments after failed mount: %v", f.Refs)
	}
	if f.AttachCalls != 1 {
		t.Fatalf("fell back to SCSI on a non-fallback error (%d attach calls)", f.AttachCalls)
	}
}

type failAfter struct {
	*fakeuvm.UVM
	n     int
	err   error
	calls *int
}

func (f *failAfter) AttachVPMem(ctx context.Context, p string) (layers.Attachment, error) {
	*f.calls++
	if *f.calls > f.n {
		return nil, f.err
	}
	return f.UVM.AttachVPMem(ctx, p)
}

func TestUVMRollbackAtEveryStep(t *testing.T) {
	ctx := context.Background()
	for _, step := range []string{"scsi-layer", "scratch", "combine"} {
		t.Run(step, func(t *testing.T) {
			f := fakeuvm.New()
			f.VPMemSlots = 1
			l := folders(t, 3)
			switch step {
			case "scsi-layer":
				f.FailSCSI = filepath.Join("layer2", layers.LayerFile)
			case "scratch":
				f.FailSCSI = layers.ScratchFile
			case "combine":
				f.FailCombine = true
			}
			m := layers.NewInUVM(f)
			if _, err := m.Mount(ctx, "c1", l, "/run/c1"); err == nil {
				t.Fatal("mount succeeded despite injected failure")
			}
			if f.Total() != 0 {
				t.Fatalf("leaked after failure at %s: %v %v", step, f.Refs, f.Combined)
			}
			if m.Mounted("c1") {
				t.Fatal("failed mount left a record")
			}
		})
	}
}

func TestUVMSharedLayersAndScratch(t *testing.T) {
	ctx := context.Background()
	f := fakeuvm.New()
	l := folders(t, 2)
	// Second container: same layers, scratch is a symlink to the first's.
	l2 := layers.Layers{ReadOnly: l.ReadOnly, Scratch: filepath.Join(t.TempDir(), "member")}
	os.MkdirAll(l2.Scratch, 0o755)
	os.Symlink(filepath.Join(l.Scratch, layers.ScratchFile), filepath.Join(l2.Scratch, layers.ScratchFile))
	m := layers.NewInUVM(f)
	if _, err := m.Mount(ctx, "sandbox", l, "/run/c/sandbox"); err != nil {
		t.Fatal(err)
	}
	r2, err := m.Mount(ctx, "member", l2, "/run/c/member")
	if err != nil {
		t.Fatal(err)
	}
	scratchKey := "scsi:" + filepath.Join(l.Scratch, layers.ScratchFile)
	if f.Refs[scratchKey] != 2 {
		t.Fatalf("shared scratch refs %d, want one device used twice", f.Refs[scratchKey])
	}
	if got := f.Combined[r2]; !strings.Contains(got[len(got)-2], "/scratch/member/upper") {
		t.Fatalf("member upper %v", got)
	}
	for _, lf := range l.ReadOnly {
		if f.Refs["vpmem:"+filepath.Join(lf, layers.LayerFile)] != 2 {
			t.Fatalf("layer refs %v", f.Refs)
		}
	}
	if err := m.Unmount(ctx, "sandbox", layers.UnmountAll); err != nil {
		t.Fatal(err)
	}
	if f.Refs[scratchKey] != 1 || len(f.Combined) != 1 {
		t.Fatalf("member lost its attachments: %v", f.Refs)
	}
	if err := m.Unmount(ctx, "member", layers.UnmountAll); err != nil {
		t.Fatal(err)
	}
	if f.Total() != 0 {
		t.Fatalf("leak: %v", f.Refs)
	}
}

func TestUVMUnmountContinuesPastErrors(t *testing.T) {
	ctx := context.Background()
	f := fakeuvm.New()
	l := folders(t, 3)
	m := layers.NewInUVM(f)
	if _, err := m.Mount(ctx, "c1", l, "/run/c1"); err != nil {
		t.Fatal(err)
	}
	f.FailRelease = filepath.Join("layer1", layers.LayerFile)
	err := m.Unmount(ctx, "c1", layers.UnmountAll)
	if err == nil || !strings.Contains(err.Error(), "layer1") {
		t.Fatalf("want joined release error naming layer1, got %v", err)
	}
	// Everything else was released; layer1 stays for a retry.
	if f.Total() != 1 {
		t.Fatalf("refs after failing unmount: %v", f.Refs)
	}
	f.FailRelease = ""
	if err := m.Unmount(ctx, "c1", layers.UnmountAll); err != nil {
		t.Fatal(err)
	}
	if f.Total() != 0 || m.Mounted("c1") {
		t.Fatalf("retry left %v", f.Refs)
	}
}

func TestUVMConcurrent(t *testing.T) {
	ctx := context.Background()
	f := fakeuvm.New()
	f.VPMemSlots = 2
	l := folders(t, 4)
	m := layers.NewInUVM(f)
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := fmt.Sprintf("c%d", i)
			ll := layers.Layers{ReadOnly: l.ReadOnly[i%2:], Scratch: l.Scratch}
			if _, err := m.Mount(ctx, id, ll, "/run/c/"+id); err != nil {
				t.Error(err)
				return
			}
			if err := m.Unmount(ctx, id, layers.UnmountAll); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	if f.Total() != 0 {
		t.Fatalf("refs after concurrent mount/unmount: %v", f.Refs)
	}
}

func TestUVMBadInput(t *testing.T) {
	m := layers.NewInUVM(fakeuvm.New())
	ctx := context.Background()
	if _, err := m.Mount(ctx, "c", layers.Layers{Scratch: "/x"}, "/run/c"); !errors.Is(err, layers.ErrTooFewLayers) {
		t.Fatalf("no layers: %v", err)
	}
	l := folders(t, 1)
	if _, err := m.Mount(ctx, "c", l, "relative"); err == nil {
		t.Fatal("relative guest root accepted")
	}
	missing := layers.Layers{ReadOnly: []string{"/nonexistent/layer"}, Scratch: l.Scratch}
	if _, err := m.Mount(ctx, "c", missing, "/run/c"); err == nil || !strings.Contains(err.Error(), "/nonexistent/layer") {
		t.Fatalf("missing layer: %v", err)
	}
}

// The host tells the VM how to open each disk from what layervisor made it
// as — layers as fixed-VHD images, the scratch by the name the store gave
// it — never from content: a raw scratch that starts with a VHDX signature
// (the guest can write one into its first sector) stays raw.
func TestUVMDiskFormatsAreRecordedNotProbed(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		want scsi.Format
	}{{layers.ScratchFile, scsi.FormatRaw}, {layers.ScratchVHDX, scsi.FormatVHDX}} {
		f := fakeuvm.New()
		f.VPMemSlots = 0 // every layer goes to SCSI
		l := folders(t, 2)
		os.Remove(filepath.Join(l.Scratch, layers.ScratchFile))
		scratch := filepath.Join(l.Scratch, tc.name)
		// Content that says the opposite of the name.
		content := []byte("vhdxfile")
		if tc.name == layers.ScratchVHDX {
			content = make([]byte, 4096)
		}
		os.WriteFile(scratch, content, 0o644)
		m := layers.NewInUVM(f)
		if _, err := m.Mount(ctx, "c1", l, "/run/gcs/c/c1"); err != nil {
			t.Fatal(err)
		}
		if got := f.Formats["scsi:"+scratch]; got != tc.want {
			t.Errorf("scratch %s opened as %q, want %q", tc.name, got, tc.want)
		}
		for _, d := range l.ReadOnly {
			if got := f.Formats["scsi:"+filepath.Join(d, layers.LayerFile)]; got != layers.LayerFormat {
				t.Errorf("layer %s opened as %q, want %q", d, got, layers.LayerFormat)
			}
		}
		if err := m.Unmount(ctx, "c1", layers.UnmountAll); err != nil {
			t.Fatal(err)
		}
	}
}
