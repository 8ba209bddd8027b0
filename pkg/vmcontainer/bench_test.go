package vmcontainer_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/resources"
	"github.com/layervisor/layervisor/pkg/store"
	"github.com/layervisor/layervisor/pkg/vmcontainer"
)

// scsiOnly refuses VPMEM so that every layer goes to SCSI.
type scsiOnly struct{ vmcontainer.VM }

func (scsiOnly) AttachVPMem(context.Context, string) (layers.Attachment, error) {
	return nil, layers.ErrVPMemNoSlot
}

// BenchmarkRootfsReady: a running UVM, a container of 1, 5 or 10 layers:
// from its layer folders to a combined root file system in the guest, with
// layers on VPMEM and on SCSI, next to the same on the host.
//
//	go test -run '^$' -bench RootfsReady -benchtime 5x ./pkg/vmcontainer/
func BenchmarkRootfsReady(b *testing.B) {
	e := newEnv(b, 64)
	ctx := context.Background()
	for _, n := range []int{1, 5, 10} {
		im, err := imagebuild.Bench(fmt.Sprintf("l%d:1", n), n, int64(n), imagebuild.Gzip)
		if err != nil {
			b.Fatal(err)
		}
		arch := filepath.Join(b.TempDir(), "img.tar")
		if err := im.Write(imagebuild.OCITar, arch); err != nil {
			b.Fatal(err)
		}
		if _, err := e.s.Import(ctx, arch, store.ImportOptions{}); err != nil {
			b.Fatal(err)
		}
		for _, mode := range []string{"vpmem", "scsi", "host"} {
			b.Run(fmt.Sprintf("%dlayers/%s", n, mode), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					name := fmt.Sprintf("%s%d-%d", mode, n, i)
					if _, err := e.s.CreateContainer(ctx, name, fmt.Sprintf("l%d:1", n), store.ContainerOptions{ScratchSize: 64 << 20}); err != nil {
						b.Fatal(err)
					}
					folders, _ := e.s.LayerFolders(name)
					var vm resources.UVM = e.vm
					if mode == "scsi" {
						vm = scsiOnly{e.vm}
					}
					b.StartTimer()
					if mode == "host" {
						if _, err := e.s.Mount(ctx, name); err != nil {
							b.Fatal(err)
						}
						b.StopTimer()
						e.s.RemoveContainer(ctx, name)
						continue
					}
					res, err := resources.Setup(ctx, vm, layers.NewInUVM(vm), resources.Container{ID: name, Spec: &specs.Spec{}, LayerFolders: folders, GuestRoot: guestpath.ContainerRoot(name)})
					b.StopTimer()
					if err != nil {
						b.Fatal(err)
					}
					if err := res.Release(ctx); err != nil {
						b.Fatal(err)
					}
					e.s.RemoveContainer(ctx, name)
				}
			})
		}
	}
}

// BenchmarkHotAttach: attach and mount in the guest, per kind. VPMEM uses
// a fresh image each time (a slot, once bound, only remounts its layer).
func BenchmarkHotAttach(b *testing.B) {
	e := newEnv(b, 64)
	ctx := context.Background()
	f, _ := e.s.LayerFolders(e.containerB(b, "c"))
	layer := filepath.Join(f[0], layers.LayerFile)
	b.Run("scsi", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			a, err := e.vm.AttachSCSI(ctx, layer, layers.LayerFormat, true)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			a.Release(ctx)
			b.StartTimer()
		}
	})
	b.Run("vpmem", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			img := filepath.Join(b.TempDir(), "l.vhd")
			data, _ := os.ReadFile(layer)
			os.WriteFile(img, data, 0o644)
			b.StartTimer()
			if _, err := e.vm.AttachVPMem(ctx, img); err != nil {
				b.Fatal(err)
			}
		}
	})
	dir := b.TempDir()
	b.Run("share", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			a, err := e.vm.AddShare(ctx, dir, true)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			a.Release(ctx)
			b.StartTimer()
		}
	})
}

func (e *env) containerB(b *testing.B, name string) string {
	if _, err := e.s.CreateContainer(context.Background(), name, "demo:latest", store.ContainerOptions{ScratchSize: 64 << 20}); err != nil {
		b.Fatal(err)
	}
	return name
}
