package scratch

import (
	"context"
	"fmt"
	"strings"

	"github.com/layervisor/layervisor/pkg/diskimage"
)

// Format is the on-disk format of a scratch.
type Format string

const (
	// Raw ext4: what the host path loop-mounts; the Linux default.
	Raw Format = "raw"
	// VHDX holding the same ext4, for consumers that take VHDX (QEMU's
	// vhdx driver in the utility VM, Windows hosts). It stays small: the
	// template's unused blocks are unallocated.
	VHDX Format = "vhdx"
)

// ParseFormat checks a user-given scratch format; empty means Raw.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case "", Raw:
		return Raw, nil
	case VHDX:
		return VHDX, nil
	}
	return "", fmt.Errorf("scratch format %q: want raw or vhdx", s)
}

// EnsureTemplateFormat is EnsureTemplate for a format: the VHDX template is
// converted once from the raw one and cached beside it.
func EnsureTemplateFormat(ctx context.Context, root string, size int64, f Format) (string, error) {
	raw, err := EnsureTemplate(ctx, root, size)
	if err != nil || f != VHDX {
		return raw, err
	}
	path := strings.TrimSuffix(raw, ".img") + ".vhdx"
	err = cached(path, func() error {
		// Convert creates path atomically when the copy is complete.
		_, err := diskimage.Convert(ctx, raw, path, diskimage.ConvertOptions{Format: diskimage.VHDX})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("scratch template: %w", err)
	}
	return path, nil
}
