package scratch

import (
	"context"
	"fmt"
	"strings"

	"github.com/layervisor/layervisor/pkg/diskformat"
	"github.com/layervisor/layervisor/pkg/diskimage"
)

// Format is the on-disk format of a scratch: diskformat.Raw (raw ext4,
// what the host path loop-mounts; the Linux default) or diskformat.VHDX
// (the same ext4 in a VHDX, for consumers that take VHDX: QEMU's vhdx
// driver in the utility VM, Windows hosts; it stays small, the template's
// unused blocks are unallocated).
//
// Deprecated: the name is kept for pkg/store; use diskformat.Format.
type Format = diskformat.Format

// VHDX is diskformat.VHDX.
//
// Deprecated: the name is kept for pkg/store; use diskformat.VHDX.
const VHDX = diskformat.VHDX

// ParseFormat checks a user-given scratch format; empty means raw.
func ParseFormat(s string) (diskformat.Format, error) {
	if s == "" {
		return diskformat.Raw, nil
	}
	f, err := diskformat.Parse(s, diskformat.Raw, diskformat.VHDX)
	if err != nil {
		return "", fmt.Errorf("scratch format: %w", err)
	}
	return f, nil
}

// EnsureTemplateFormat is EnsureTemplate for a format: the VHDX template is
// converted once from the raw one and cached beside it.
func EnsureTemplateFormat(ctx context.Context, root string, size int64, f diskformat.Format) (string, error) {
	raw, err := EnsureTemplate(ctx, root, size)
	if err != nil || f != diskformat.VHDX {
		return raw, err
	}
	path := strings.TrimSuffix(raw, ".img") + ".vhdx"
	err = cached(path, func() error {
		// Convert creates path atomically when the copy is complete.
		_, err := diskimage.Convert(ctx, raw, path, diskimage.ConvertOptions{Format: diskformat.VHDX})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("scratch template: %w", err)
	}
	return path, nil
}
