package layers

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
)

// fakeUVM is a ref-counting model of a UVM's controllers, with failure
// injection, for unit-testing InUVM's logic. Real VMs test the real thing.
type fakeUVM struct {
	mu          sync.Mutex
	vpmemSlots  int
	vpmemMax    int64
	refs        map[string]int // "vpmem:"/"scsi:" + host path
	readOnly    map[string]bool
	combined    map[string][]string
	dirs        map[string]bool
	failVPMem   error
	failSCSI    string // host path whose SCSI attach fails
	failCombine bool
	failRelease string
	attachCalls int
}

func newFake() *fakeUVM {
	return &fakeUVM{vpmemSlots: 64, vpmemMax: 1 << 30, refs: map[string]int{}, readOnly: map[string]bool{}, combined: map[string][]string{}, dirs: map[string]bool{}}
}

type fakeAttachment struct {
	f    *fakeUVM
	key  string
	path string
}

func (a *fakeAttachment) GuestPath() string { return a.path }
func (a *fakeAttachment) Release(ctx context.Context) error {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	if a.f.failRelease != "" && strings.HasSuffix(a.key, a.f.failRelease) {
		return errors.New("injected release failure")
	}
	if a.f.refs[a.key] <= 0 {
		return fmt.Errorf("release of %s below zero", a.key)
	}
	a.f.refs[a.key]--
	if a.f.refs[a.key] == 0 {
		delete(a.f.refs, a.key)
	}
	return nil
}

func (f *fakeUVM) AttachVPMem(ctx context.Context, hostPath string) (Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attachCalls++
	if f.failVPMem != nil {
		return nil, f.failVPMem
	}
	key := "vpmem:" + hostPath
	if f.refs[key] == 0 {
		used := 0
		for k := range f.refs {
			if strings.HasPrefix(k, "vpmem:") {
				used++
			}
		}
		if used >= f.vpmemSlots {
			return nil, fmt.Errorf("attach %s: %w", hostPath, ErrVPMemNoSlot)
		}
		st, err := os.Stat(hostPath)
		if err != nil {
			return nil, err
		}
		if st.Size() > f.vpmemMax {
			return nil, fmt.Errorf("attach %s: %w", hostPath, ErrVPMemTooLarge)
		}
	}
	f.refs[key]++
	return &fakeAttachment{f, key, "/run/layers/p-" + filepath.Base(filepath.Dir(hostPath))}, nil
}

func (f *fakeUVM) AttachSCSI(ctx context.Context, hostPath string, readOnly bool) (Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attachCalls++
	if f.failSCSI != "" && strings.HasSuffix(hostPath, f.failSCSI) {
		return nil, errors.New("injected SCSI failure")
	}
	key := "scsi:" + hostPath
	if f.refs[key] > 0 && f.readOnly[key] != readOnly {
		return nil, errors.New("conflicting attach")
	}
	f.refs[key]++
	f.readOnly[key] = readOnly
	return &fakeAttachment{f, key, "/run/mounts/scsi/" + filepath.Base(filepath.Dir(hostPath))}, nil
}

func (f *fakeUVM) MkdirAll(ctx context.Context, p string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dirs[p] = true
	return nil
}

func (f *fakeUVM) CombineLayers(ctx context.Context, lowers []string, upper, work, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failCombine {
		return errors.New("injected combine failure")
	}
	if _, ok := f.combined[target]; ok {
		return errors.New("target busy")
	}
	f.combined[target] = append(slices.Clone(lowers), upper, work)
	return nil
}

func (f *fakeUVM) RemoveCombinedLayers(ctx context.Context, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.combined[target]; !ok {
		return errors.New("not combined")
	}
	delete(f.combined, target)
	return nil
}

func (f *fakeUVM) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.refs {
		n += v
	}
	return n + len(f.combined)
}

// folders makes n layer folders (the fake only stats them) and a scratch.
func folders(t *testing.T, n int, sizes ...int64) Layers {
	t.Helper()
	root := t.TempDir()
	var l Layers
	for i := 0; i < n; i++ {
		d := filepath.Join(root, fmt.Sprintf("layer%d", i))
		os.MkdirAll(d, 0o755)
		size := int64(4096)
		if i < len(sizes) {
			size = sizes[i]
		}
		f, _ := os.Create(filepath.Join(d, LayerFile))
		f.Truncate(size)
		f.Close()
		l.ReadOnly = append(l.ReadOnly, d)
	}
	l.Scratch = filepath.Join(root, "scratch")
	os.MkdirAll(l.Scratch, 0o755)
	os.WriteFile(filepath.Join(l.Scratch, ScratchFile), nil, 0o644)
	return l
}

func TestUVMMountVPMemAndFallback(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	f.vpmemSlots = 1
	f.vpmemMax = 1 << 20
	l := folders(t, 3, 4096, 2<<20, 4096) // layer1 too large, layer2 no slot left
	m := NewInUVM(f)
	rootfs, err := m.Mount(ctx, "c1", l, "/run/gcs/c/c1")
	if err != nil {
		t.Fatal(err)
	}
	if rootfs != "/run/gcs/c/c1/rootfs" {
		t.Fatalf("rootfs %q", rootfs)
	}
	lowers := f.combined[rootfs]
	want := []string{"/run/layers/p-layer0", "/run/mounts/scsi/layer1", "/run/mounts/scsi/layer2",
		"/run/mounts/scsi/scratch/scratch/c1/upper", "/run/mounts/scsi/scratch/scratch/c1/work"}
	if !slices.Equal(lowers, want) {
		t.Fatalf("overlay %v\nwant    %v", lowers, want)
	}
	// Partial unmount: SCSI first; the VPMEM layer stays attached.
	if err := m.Unmount(ctx, "c1", UnmountSCSI); err != nil {
		t.Fatal(err)
	}
	if len(f.combined) != 0 {
		t.Fatal("combined layers not removed first")
	}
	if f.refs["vpmem:"+filepath.Join(l.ReadOnly[0], LayerFile)] != 1 || f.total() != 1 {
		t.Fatalf("after SCSI unmount refs = %v", f.refs)
	}
	if !m.Mounted("c1") {
		t.Fatal("record dropped while VPMEM layer still attached")
	}
	if err := m.Unmount(ctx, "c1", UnmountVPMem); err != nil {
		t.Fatal(err)
	}
	if f.total() != 0 || m.Mounted("c1") {
		t.Fatalf("after VPMEM unmount refs = %v", f.refs)
	}
	if err := m.Unmount(ctx, "c1", UnmountAll); !errors.Is(err, ErrNotMounted) {
		t.Fatalf("unmount of unmounted: %v", err)
	}
}

func TestUVMOtherVPMemErrorFails(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	l := folders(t, 2)
	m := NewInUVM(f)
	// A good first layer, then a VPMEM error that is not a fallback reason.
	f.vpmemSlots = 64
	calls := 0
	f2 := &failAfter{fakeUVM: f, n: 1, err: errors.New("qmp: device_add failed"), calls: &calls}
	m = NewInUVM(f2)
	if _, err := m.Mount(ctx, "c1", l, "/run/c1"); err == nil || !strings.Contains(err.Error(), "device_add") {
		t.Fatalf("want VPMEM error, got %v", err)
	}
	if f.total() != 0 {
		t.Fatalf("leaked attachments after failed mount: %v", f.refs)
	}
	if f.attachCalls != 1 {
		t.Fatalf("fell back to SCSI on a non-fallback error (%d attach calls)", f.attachCalls)
	}
}

type failAfter struct {
	*fakeUVM
	n     int
	err   error
	calls *int
}

func (f *failAfter) AttachVPMem(ctx context.Context, p string) (Attachment, error) {
	*f.calls++
	if *f.calls > f.n {
		return nil, f.err
	}
	return f.fakeUVM.AttachVPMem(ctx, p)
}

func TestUVMRollbackAtEveryStep(t *testing.T) {
	ctx := context.Background()
	for _, step := range []string{"scsi-layer", "scratch", "combine"} {
		t.Run(step, func(t *testing.T) {
			f := newFake()
			f.vpmemSlots = 1
			l := folders(t, 3)
			switch step {
			case "scsi-layer":
				f.failSCSI = filepath.Join("layer2", LayerFile)
			case "scratch":
				f.failSCSI = ScratchFile
			case "combine":
				f.failCombine = true
			}
			m := NewInUVM(f)
			if _, err := m.Mount(ctx, "c1", l, "/run/c1"); err == nil {
				t.Fatal("mount succeeded despite injected failure")
			}
			if f.total() != 0 {
				t.Fatalf("leaked after failure at %s: %v %v", step, f.refs, f.combined)
			}
			if m.Mounted("c1") {
				t.Fatal("failed mount left a record")
			}
		})
	}
}

func TestUVMSharedLayersAndScratch(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	l := folders(t, 2)
	// Second container: same layers, scratch is a symlink to the first's.
	l2 := Layers{ReadOnly: l.ReadOnly, Scratch: filepath.Join(t.TempDir(), "member")}
	os.MkdirAll(l2.Scratch, 0o755)
	os.Symlink(filepath.Join(l.Scratch, ScratchFile), filepath.Join(l2.Scratch, ScratchFile))
	m := NewInUVM(f)
	if _, err := m.Mount(ctx, "sandbox", l, "/run/c/sandbox"); err != nil {
		t.Fatal(err)
	}
	r2, err := m.Mount(ctx, "member", l2, "/run/c/member")
	if err != nil {
		t.Fatal(err)
	}
	scratchKey := "scsi:" + filepath.Join(l.Scratch, ScratchFile)
	if f.refs[scratchKey] != 2 {
		t.Fatalf("shared scratch refs %d, want one device used twice", f.refs[scratchKey])
	}
	if got := f.combined[r2]; !strings.Contains(got[len(got)-2], "/scratch/member/upper") {
		t.Fatalf("member upper %v", got)
	}
	for _, lf := range l.ReadOnly {
		if f.refs["vpmem:"+filepath.Join(lf, LayerFile)] != 2 {
			t.Fatalf("layer refs %v", f.refs)
		}
	}
	if err := m.Unmount(ctx, "sandbox", UnmountAll); err != nil {
		t.Fatal(err)
	}
	if f.refs[scratchKey] != 1 || len(f.combined) != 1 {
		t.Fatalf("member lost its attachments: %v", f.refs)
	}
	if err := m.Unmount(ctx, "member", UnmountAll); err != nil {
		t.Fatal(err)
	}
	if f.total() != 0 {
		t.Fatalf("leak: %v", f.refs)
	}
}

func TestUVMUnmountContinuesPastErrors(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	l := folders(t, 3)
	m := NewInUVM(f)
	if _, err := m.Mount(ctx, "c1", l, "/run/c1"); err != nil {
		t.Fatal(err)
	}
	f.failRelease = filepath.Join("layer1", LayerFile)
	err := m.Unmount(ctx, "c1", UnmountAll)
	if err == nil || !strings.Contains(err.Error(), "layer1") {
		t.Fatalf("want joined release error naming layer1, got %v", err)
	}
	// Everything else was released; layer1 stays for a retry.
	if f.total() != 1 {
		t.Fatalf("refs after failing unmount: %v", f.refs)
	}
	f.failRelease = ""
	if err := m.Unmount(ctx, "c1", UnmountAll); err != nil {
		t.Fatal(err)
	}
	if f.total() != 0 || m.Mounted("c1") {
		t.Fatalf("retry left %v", f.refs)
	}
}

func TestUVMConcurrent(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	f.vpmemSlots = 2
	l := folders(t, 4)
	m := NewInUVM(f)
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := fmt.Sprintf("c%d", i)
			ll := Layers{ReadOnly: l.ReadOnly[i%2:], Scratch: l.Scratch}
			if _, err := m.Mount(ctx, id, ll, "/run/c/"+id); err != nil {
				t.Error(err)
				return
			}
			if err := m.Unmount(ctx, id, UnmountAll); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	if f.total() != 0 {
		t.Fatalf("refs after concurrent mount/unmount: %v", f.refs)
	}
}

func TestUVMBadInput(t *testing.T) {
	m := NewInUVM(newFake())
	ctx := context.Background()
	if _, err := m.Mount(ctx, "c", Layers{Scratch: "/x"}, "/run/c"); !errors.Is(err, ErrTooFewLayers) {
		t.Fatalf("no layers: %v", err)
	}
	l := folders(t, 1)
	if _, err := m.Mount(ctx, "c", l, "relative"); err == nil {
		t.Fatal("relative guest root accepted")
	}
	missing := Layers{ReadOnly: []string{"/nonexistent/layer"}, Scratch: l.Scratch}
	if _, err := m.Mount(ctx, "c", missing, "/run/c"); err == nil || !strings.Contains(err.Error(), "/nonexistent/layer") {
		t.Fatalf("missing layer: %v", err)
	}
}
