package vmcontainer

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/layervisor/layervisor/internal/guestpath"
	"github.com/layervisor/layervisor/pkg/agent"
	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/resources"
	"github.com/layervisor/layervisor/pkg/runspec"
	"github.com/layervisor/layervisor/pkg/uvm"
	"github.com/layervisor/layervisor/pkg/uvm/scsi"
)

// VM adapts a running UVM to resources.UVM (and so to layers.UVM).
type VM struct{ U *uvm.UVM }

var _ resources.UVM = VM{}

func (v VM) AttachVPMem(ctx context.Context, hostPath string) (layers.Attachment, error) {
	c, err := v.U.VPMem()
	if err != nil {
		return nil, err
	}
	return attachVPMem(ctx, c, hostPath)
}

func (v VM) AttachSCSI(ctx context.Context, hostPath string, format diskformat.Format, readOnly bool) (layers.Attachment, error) {
	c, err := v.U.SCSI()
	if err != nil {
		return nil, err
	}
	return attachSCSI(ctx, c, hostPath, format, readOnly)
}

func (v VM) AddShare(ctx context.Context, hostPath string, readOnly bool) (layers.Attachment, error) {
	c, err := v.U.Shares()
	if err != nil {
		return nil, err
	}
	return addShare(ctx, c, hostPath, readOnly)
}

func (v VM) AttachDisk(ctx context.Context, hostPath string, format diskformat.Format, readOnly, passThrough bool) (layers.Attachment, error) {
	c, err := v.U.SCSI()
	if err != nil {
		return nil, err
	}
	return c.Attach(ctx, hostPath, scsi.Options{Format: format, ReadOnly: readOnly, MountInGuest: true})
}

func (v VM) MkdirAll(ctx context.Context, p string) error { return v.U.Agent().Mkdir(ctx, p) }

func (v VM) CombineLayers(ctx context.Context, lowers []string, upper, work, target string) error {
	return v.U.Agent().CombineLayers(ctx, lowers, upper, work, target)
}

func (v VM) RemoveCombinedLayers(ctx context.Context, target string) error {
	return v.U.Agent().RemoveCombinedLayers(ctx, target)
}

func (v VM) BindMount(ctx context.Context, src, dst string, ro bool) error {
	return v.U.Agent().BindMount(ctx, src, dst, ro)
}

func (v VM) Unmount(ctx context.Context, p string) error { return v.U.Agent().Unmount(ctx, p) }

func (v VM) SandboxMountsRoot() string { return guestpath.SandboxMounts }

var execSeq atomic.Uint64

// Exec runs a command in the container's root file system in the guest,
// with the guest's OCI runtime and the default confinement of a run.
func Exec(ctx context.Context, u *uvm.UVM, rootfs string, args, env []string, cwd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	id := fmt.Sprintf("exec-%d-%d", os.Getpid(), execSeq.Add(1))
	spec, err := runspec.Build(runspec.Flags{ID: id, Args: args, Env: env, Cwd: cwd})
	if err != nil {
		return 0, err
	}
	spec.Root.Path = rootfs
	return u.Agent().StartContainer(ctx, agent.ContainerRequest{ID: id, Spec: spec, Stdin: stdin, Stdout: stdout, Stderr: stderr}).Wait()
}
