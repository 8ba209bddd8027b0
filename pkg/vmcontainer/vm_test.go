package vmcontainer_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/ociruntime"
	"github.com/layervisor/layervisor/pkg/resources"
	"github.com/layervisor/layervisor/pkg/runspec"
	"github.com/layervisor/layervisor/pkg/store"
	"github.com/layervisor/layervisor/pkg/uvm"
	"github.com/layervisor/layervisor/pkg/vmcontainer"
)

func TestMain(m *testing.M) {
	os.Exit(testutil.Main(m))
}

var (
	initrdOnce sync.Once
	initrd     string
	initrdErr  error
)

type env struct {
	s   *store.Store
	u   *uvm.UVM
	vm  vmcontainer.VM
	mnt *layers.InUVM
}

// newEnv imports the demo image into a fresh store and boots a UVM.
func newEnv(t testing.TB, vpmemSlots int) *env {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "qemu-system-x86_64")
	boot, agent := testutil.NeedUVMKernel(t), testutil.GuestAgent(t)
	ctx := context.Background()
	initrdOnce.Do(func() {
		d, err := testutil.SharedDir("lv-initrd")
		if err != nil {
			initrdErr = err
			return
		}
		initrd = filepath.Join(d, "initrd.img")
		initrdErr = uvm.BuildInitramfs(ctx, uvm.InitramfsOptions{BootDir: boot, Agent: agent, Out: initrd})
	})
	if initrdErr != nil {
		t.Fatal(initrdErr)
	}
	root := t.TempDir()
	s, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	im, err := imagebuild.Demo("demo:latest")
	if err != nil {
		t.Fatal(err)
	}
	arch := filepath.Join(t.TempDir(), "demo.tar")
	if err := im.Write(imagebuild.OCITar, arch); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, arch, store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	u, err := uvm.Create(ctx, uvm.Config{ID: "vm", Root: root, BootDir: boot, Initrd: initrd, ScratchSize: 64 << 20, VPMemSlots: vpmemSlots})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Stop(context.Background()); u.Remove(context.Background()) })
	vm := vmcontainer.VM{U: u}
	return &env{s: s, u: u, vm: vm, mnt: layers.NewInUVM(vm)}
}

func (e *env) container(t *testing.T, name string, opts store.ContainerOptions) []string {
	t.Helper()
	if opts.ScratchSize == 0 && opts.ShareScratchWith == "" {
		opts.ScratchSize = 64 << 20
	}
	if _, err := e.s.CreateContainer(context.Background(), name, "demo:latest", opts); err != nil {
		t.Fatal(err)
	}
	f, err := e.s.LayerFolders(name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (e *env) sh(t *testing.T, rootfs, script string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code, err := vmcontainer.Exec(context.Background(), e.u, rootfs, []string{"sh", "-c", script}, []string{"PATH=/bin:/usr/bin"}, "/", nil, &out, &errb)
	if err != nil {
		t.Fatalf("exec in guest: %v (stderr %s)", err, errb.String())
	}
	return out.String() + errb.String(), code
}

// listing is what both isolation modes must agree on.
const listing = `cd / && for f in etc/demo-release etc/motd app/config app/old-only app/blob.bin data.txt data-link.txt release; do if [ -e $f ]; then echo "$f $(stat -c '%s %a %h' $f) $(sha256sum < $f | cut -c1-16)"; else echo "$f absent"; fi; done; readlink release; ls /app`

func TestSameViewBothModesAndSharedLayers(t *testing.T) {
	e := newEnv(t, 16)
	ctx := context.Background()
	f1 := e.container(t, "c1", store.ContainerOptions{})
	f2 := e.container(t, "c2", store.ContainerOptions{})
	res1, err := resources.Setup(ctx, e.vm, e.mnt, resources.Container{ID: "c1", Spec: &specs.Spec{}, LayerFolders: f1, GuestRoot: guestpath.ContainerRoot("c1")})
	if err != nil {
		t.Fatal(err)
	}
	res2, err := resources.Setup(ctx, e.vm, e.mnt, resources.Container{ID: "c2", Spec: &specs.Spec{}, LayerFolders: f2, GuestRoot: guestpath.ContainerRoot("c2")})
	if err != nil {
		t.Fatal(err)
	}
	vmView, code := e.sh(t, res1.Rootfs, listing)
	if code != 0 {
		t.Fatalf("listing in VM: %d %s", code, vmView)
	}
	// Each layer is attached once although two containers use it.
	for _, lf := range f1[:len(f1)-1] {
		if n := must(e.u.VPMem()).RefCount(filepath.Join(lf, layers.LayerFile)); n != 2 {
			t.Errorf("layer %s: VPMEM refs %d, want 2", lf, n)
		}
	}
	// Host (process isolation) view of the same image.
	f3 := e.container(t, "h", store.ContainerOptions{})
	_ = f3
	hostRoot, err := e.s.Mount(ctx, "h")
	if err != nil {
		t.Fatal(err)
	}
	defer e.s.RemoveContainer(ctx, "h")
	var hout bytes.Buffer
	hc, err := runOnHost(ctx, t, hostRoot, []string{"sh", "-c", listing}, &hout)
	if err != nil || hc != 0 {
		t.Fatalf("host listing: %d %v %s", hc, err, hout.String())
	}
	if hout.String() != vmView {
		t.Fatalf("views differ\nhost:\n%s\nvm:\n%s", hout.String(), vmView)
	}
	if !strings.Contains(vmView, "etc/motd absent") || !strings.Contains(vmView, "app/old-only absent") {
		t.Fatalf("whiteout/opaque not applied in VM:\n%s", vmView)
	}
	// Removing c1 leaves c2 working.
	if err := res1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if out, code := e.sh(t, res2.Rootfs, "cat /etc/demo-release"); code != 0 || out != "layervisor demo 2\n" {
		t.Fatalf("c2 after c1 released: %d %q", code, out)
	}
	if err := res2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n := must(e.u.SCSI()).Attached(); n != 0 {
		t.Fatalf("%d SCSI disks still attached after both containers released", n)
	}
}

func TestVPMemFallbackMountsAndSharedScratch(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	sandbox := e.container(t, "sandbox", store.ContainerOptions{})
	member := e.container(t, "member", store.ContainerOptions{ShareScratchWith: "sandbox"})
	hostDir := t.TempDir()
	os.WriteFile(filepath.Join(hostDir, "shared.txt"), []byte("from the host\n"), 0o644)
	single := filepath.Join(t.TempDir(), "single.conf")
	os.WriteFile(single, []byte("one file\n"), 0o644)
	os.WriteFile(filepath.Join(filepath.Dir(single), "sibling"), []byte("secret"), 0o644)
	disk := filepath.Join(t.TempDir(), "disk.img")
	testutil.NeedTool(t, "mkfs.ext4")
	os.WriteFile(disk, nil, 0o644)
	os.Truncate(disk, 32<<20)
	if out, err := execCmd("mkfs.ext4", "-q", "-F", disk); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Source: hostDir, Destination: "/data", Options: []string{"ro"}},
		{Source: single, Destination: "/etc/single.conf"},
		{Source: disk, Destination: "/disk", Type: "virtual-disk"},
		{Source: "sandbox://cache", Destination: "/cache"},
	}}
	r1, err := resources.Setup(ctx, e.vm, e.mnt, resources.Container{ID: "sandbox", Spec: spec, LayerFolders: sandbox, GuestRoot: guestpath.ContainerRoot("sandbox")})
	if err != nil {
		t.Fatal(err)
	}
	// One VPMEM slot: the first layer took it, the rest fell back to SCSI.
	if slots, _ := must(e.u.VPMem()).Bound(); slots != 1 {
		t.Fatalf("VPMEM slots bound %d, want 1", slots)
	}
	scsiBefore := must(e.u.SCSI()).Attached()
	r2, err := resources.Setup(ctx, e.vm, e.mnt, resources.Container{ID: "member", Spec: &specs.Spec{Mounts: []specs.Mount{{Source: "sandbox://cache", Destination: "/cache"}}}, LayerFolders: member, GuestRoot: guestpath.ContainerRoot("member")})
	if err != nil {
		t.Fatal(err)
	}
	if must(e.u.SCSI()).Attached() != scsiBefore {
		t.Fatalf("shared scratch or layers attached again: %d → %d SCSI disks", scsiBefore, must(e.u.SCSI()).Attached())
	}
	out, code := e.sh(t, r1.Rootfs, "cat /data/shared.txt /etc/single.conf; echo siblings=$(ls /etc | grep -c sibling); touch /data/x 2>/dev/null || echo data-is-read-only; echo hi > /disk/f && cat /disk/f; echo c > /cache/f")
	if code != 0 {
		t.Fatalf("mounts in VM: %d %s", code, out)
	}
	for _, want := range []string{"from the host\n", "one file\n", "siblings=0\n", "data-is-read-only\n", "hi\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("mount output lacks %q:\n%s", want, out)
		}
	}
	if out, _ := e.sh(t, r2.Rootfs, "cat /cache/f"); out != "c\n" {
		t.Errorf("sandbox:// dir not shared between the pod's containers: %q", out)
	}
	// Partial unmount: SCSI first (scratch and SCSI layers), then VPMEM.
	if err := r2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n := must(e.u.SCSI()).Attached(); n != 0 {
		t.Fatalf("%d SCSI disks left", n)
	}
	if n := must(e.u.Shares()).Active(); n != 0 {
		t.Fatalf("%d shares left", n)
	}
}

// Detach and re-attach at the same LUN in quick succession: the guest must
// mount the new disk, not trip over the old one's remains.
func TestSCSIReattach(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	f := e.container(t, "c", store.ContainerOptions{})
	layer := filepath.Join(f[0], layers.LayerFile)
	for i := 0; i < 6; i++ {
		a, err := e.vm.AttachSCSI(ctx, layer, layers.LayerFormat, true)
		if err != nil {
			t.Fatalf("attach %d: %v", i, err)
		}
		names, err := e.u.Agent().List(ctx, a.GuestPath())
		if err != nil || len(names) == 0 {
			t.Fatalf("attach %d: mounted disk lists %v, %v", i, names, err)
		}
		if err := a.Release(ctx); err != nil {
			t.Fatalf("release %d: %v", i, err)
		}
	}
	if n := must(e.u.SCSI()).Attached(); n != 0 {
		t.Fatalf("%d disks left", n)
	}
}

// A UVM that dies mid-mount: the mount fails fast and leaves no host state.
func TestUVMDiesMidMount(t *testing.T) {
	e := newEnv(t, 16)
	ctx := context.Background()
	f := e.container(t, "c", store.ContainerOptions{})
	// Kill QEMU once the first layer is attached, in the middle of Setup.
	vm := &killAfterFirst{VM: e.vm, kill: func() { syscallKill(e.u.State().PID) }}
	done := make(chan error, 1)
	go func() {
		_, err := resources.Setup(ctx, vm, layers.NewInUVM(vm), resources.Container{ID: "c", Spec: &specs.Spec{}, LayerFolders: f, GuestRoot: guestpath.ContainerRoot("c")})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("mount in a dead UVM succeeded")
		}
		t.Logf("mount failed as it should: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("mount in a dead UVM hangs")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !e.u.Failed() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !e.u.Failed() {
		t.Fatal("UVM not marked failed")
	}
}

type killAfterFirst struct {
	vmcontainer.VM
	kill func()
	once sync.Once
}

func (k *killAfterFirst) AttachVPMem(ctx context.Context, p string) (layers.Attachment, error) {
	a, err := k.VM.AttachVPMem(ctx, p)
	k.once.Do(k.kill)
	return a, err
}

// must unwraps a controller of a UVM this test started.
func must[C any](c C, err error) C {
	if err != nil {
		panic(err)
	}
	return c
}

// runOnHost runs args in a process-isolated container of rootfs with the
// host's OCI runtime.
func runOnHost(ctx context.Context, t *testing.T, rootfs string, args []string, out io.Writer) (int, error) {
	spec, err := runspec.Build(runspec.Flags{ID: "vmtest-host", Args: args})
	if err != nil {
		return 0, err
	}
	spec.Root.Path = rootfs
	rt := &ociruntime.Runtime{StateDir: t.TempDir()}
	p, err := rt.Start(ctx, ociruntime.Container{ID: "vmtest-host", Bundle: t.TempDir(), Spec: spec, Stdout: out, Stderr: out})
	if err != nil {
		return 0, err
	}
	return p.Wait()
}
