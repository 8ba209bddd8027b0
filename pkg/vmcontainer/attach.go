// Package vmcontainer puts containers in a utility VM: it adapts a running
// UVM's controllers and guest agent to what packages layers and resources
// need, and runs a container's command through the agent.
package vmcontainer

import (
	"context"
	"errors"
	"fmt"

	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/layers"
	"github.com/layervisor/layervisor/pkg/uvm/scsi"
	"github.com/layervisor/layervisor/pkg/uvm/share"
	"github.com/layervisor/layervisor/pkg/uvm/vpmem"
)

// attachVPMem maps vpmem's fallback errors onto the ones layers checks.
func attachVPMem(ctx context.Context, c *vpmem.Controller, hostPath string) (layers.Attachment, error) {
	m, err := c.Attach(ctx, hostPath)
	switch {
	case err == nil:
		return m, nil
	case errors.Is(err, vpmem.ErrNoFreeSlot):
		return nil, fmt.Errorf("%w: %w", layers.ErrVPMemNoSlot, err)
	case errors.Is(err, vpmem.ErrTooLarge):
		return nil, fmt.Errorf("%w: %w", layers.ErrVPMemTooLarge, err)
	default:
		return nil, err
	}
}

func attachSCSI(ctx context.Context, c *scsi.Controller, hostPath string, format diskformat.Format, readOnly bool) (layers.Attachment, error) {
	return c.Attach(ctx, hostPath, scsi.Options{Format: format, ReadOnly: readOnly, MountInGuest: true})
}

func addShare(ctx context.Context, c *share.Controller, hostPath string, readOnly bool) (layers.Attachment, error) {
	return c.Attach(ctx, hostPath, readOnly)
}
