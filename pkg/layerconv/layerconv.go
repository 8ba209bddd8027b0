// Package layerconv turns an uncompressed OCI layer tar into a read-only
// layer image: an ext4 file system with overlayfs whiteouts and opaque
// directories, followed by a fixed VHD footer (layer.vhd).
//
// The tar is checked entry by entry before conversion: names and hard links
// must stay inside the layer, relative symlinks may not climb above it, and
// device nodes are refused. The ext4 writer is hcsshim's tar2ext4; its inode
// bitmaps lack the padding e2fsck expects, which is fixed afterwards so that
// every image passes `e2fsck -n -f`.
package layerconv

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"

	"github.com/layervisor/layervisor/pkg/vhd"
)

// ErrInvalidLayer marks a layer tar whose content is refused.
var ErrInvalidLayer = errors.New("invalid layer")

// PmemAlign is the unit the ext4 part of a layer image is padded to.
const PmemAlign = 2 << 20

var errConverterStopped = errors.New("ext4 converter stopped early")

// Stats describes a converted layer.
type Stats struct {
	Entries   int   // tar entries converted
	FileBytes int64 // bytes of regular-file content
	ImageSize int64 // size of the ext4 image, footer excluded
}

// Convert reads the layer tar from r and writes the layer image to out,
// which must be empty. It stops early when ctx is cancelled.
func Convert(ctx context.Context, r io.Reader, out *os.File) (Stats, error) {
	var st Stats
	pr, pw := io.Pipe()
	filterErr := make(chan error, 1)
	go func() {
		err := filter(ctx, r, pw, &st)
		pw.CloseWithError(err)
		filterErr <- err
	}()
	convErr := tar2ext4.ConvertTarToExt4(pr, out, tar2ext4.ConvertWhiteout)
	// Unblock the filter if the converter stopped early.
	pr.CloseWithError(errConverterStopped)
	ferr := <-filterErr
	if ferr != nil && !errors.Is(ferr, errConverterStopped) {
		return st, ferr // bad input or cancellation: the cause
	}
	if convErr != nil {
		return st, fmt.Errorf("convert layer to ext4: %w", convErr)
	}
	if ferr != nil {
		return st, ferr
	}
	size, err := out.Seek(0, io.SeekEnd)
	if err != nil {
		return st, fmt.Errorf("layer image size: %w", err)
	}
	// Persistent-memory namespaces in the guest come in 2 MiB units: pad
	// (sparsely) so the image can be mapped as VPMEM exactly.
	size = (size + PmemAlign - 1) / PmemAlign * PmemAlign
	if err := out.Truncate(size); err != nil {
		return st, fmt.Errorf("pad layer image: %w", err)
	}
	st.ImageSize = size
	if err := fixInodeBitmapPadding(out); err != nil {
		return st, err
	}
	if err := vhd.AppendFixedFooter(out); err != nil {
		return st, err
	}
	return st, nil
}

// filter copies the tar stream from r to w, refusing entries that could
// escape the layer or that a layer may not hold.
func filter(ctx context.Context, r io.Reader, w io.Writer, st *Stats) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	seen := map[string]bool{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read layer tar: %w", err)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "" { // the root directory itself
			continue
		}
		base := path.Base(name)
		if strings.HasPrefix(base, ".wh..wh.") && base != ".wh..wh..opq" {
			continue // aufs bookkeeping (hard-link stash), not content
		}
		hdr.Name = name
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeFifo: // tar.Reader turns legacy TypeRegA into TypeReg
		case tar.TypeSymlink:
			if err := checkSymlink(name, hdr.Linkname); err != nil {
				return err
			}
		case tar.TypeLink:
			target, err := cleanName(hdr.Linkname)
			if err != nil || target == "" {
				return fmt.Errorf("%w: hard link %q -> %q escapes the layer", ErrInvalidLayer, hdr.Name, hdr.Linkname)
			}
			if !seen[target] {
				return fmt.Errorf("%w: hard link %q -> %q: target is not in the layer", ErrInvalidLayer, hdr.Name, hdr.Linkname)
			}
			hdr.Linkname = target
		case tar.TypeChar, tar.TypeBlock:
			return fmt.Errorf("%w: %q is a device node (%d:%d); layers may not contain devices", ErrInvalidLayer, hdr.Name, hdr.Devmajor, hdr.Devminor)
		default:
			return fmt.Errorf("%w: %q has unsupported tar type %q", ErrInvalidLayer, hdr.Name, hdr.Typeflag)
		}
		seen[name] = true
		st.Entries++
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("layer entry %q: %w", name, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			n, err := io.Copy(tw, tr)
			st.FileBytes += n
			if err != nil {
				return fmt.Errorf("layer entry %q: %w", name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("layer tar: %w", err)
	}
	return nil
}

// cleanName returns the entry name relative to the layer root, or an error
// for absolute names and names with ".." components.
func cleanName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: entry %q has an absolute path", ErrInvalidLayer, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: entry %q climbs out of the layer with \"..\"", ErrInvalidLayer, name)
		}
	}
	c := path.Clean(name)
	if c == "." {
		return "", nil
	}
	return c, nil
}

// checkSymlink refuses relative targets that climb above the layer root.
// Absolute targets are resolved inside the container's root at run time, so
// they cannot escape it and are allowed.
func checkSymlink(name, target string) error {
	if target == "" {
		return fmt.Errorf("%w: symlink %q has an empty target", ErrInvalidLayer, name)
	}
	if path.IsAbs(target) {
		return nil
	}
	depth := strings.Count(name, "/") // directories above the link
	for _, part := range strings.Split(target, "/") {
		switch part {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return fmt.Errorf("%w: symlink %q -> %q escapes the layer", ErrInvalidLayer, name, target)
			}
		default:
			depth++
		}
	}
	return nil
}
