package uvm

import (
	"errors"
	"fmt"
	"os"

	"github.com/layervisor/layervisor/pkg/vhdx"
)

// WindowsSandbox is a Windows utility VM's writable disk in its state dir.
const WindowsSandbox = "sandbox.vhdx"

// ErrWindowsBoot is returned by Start for a Windows utility VM: booting
// one needs Hyper-V (HCS), which a Linux host does not have. Provisioning
// (Create) works anywhere.
var ErrWindowsBoot = errors.New("a Windows utility VM cannot boot on this host (it needs Hyper-V); its sandbox is provisioned and can be inspected with layervisor disk info")

// makeWindowsSandbox makes the sandbox of a Windows utility VM as a new
// differencing VHDX (1 MiB blocks) whose parent is the image's
// SystemTemplate.vhdx. hcsshim copies the template instead; a child is
// better here: nothing is copied, each sandbox gets its own disk identity,
// the template stays untouched for every other UVM (a write to it would
// show as a parent mismatch, not as silent corruption), and the parent
// locator is written for the sandbox's own place, so the link holds. The
// chain is sandbox → SystemTemplate → SystemTemplateBase.
func makeWindowsSandbox(path, template string) error {
	parent, err := vhdx.Open(template, vhdx.OpenOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("utility VM template %s: %w", template, err)
	}
	info := parent.Info()
	parent.Close()
	if info.Type != vhdx.Differencing {
		return fmt.Errorf("utility VM template %s is a %s VHDX; want the differencing SystemTemplate.vhdx", template, info.Type)
	}
	os.Remove(path) // a leftover of a create that died
	d, err := vhdx.Create(path, vhdx.CreateOptions{Parent: template, BlockSize: 1 << 20})
	if err != nil {
		return fmt.Errorf("sandbox from %s: %w", template, err)
	}
	return d.Close()
}
