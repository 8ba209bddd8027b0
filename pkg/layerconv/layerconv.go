// Package layerconv turns an uncompressed OCI layer tar into a read-only
// layer image: an ext4 file system holding the layer's content under
// ContentDir, in overlayfs form (whiteouts as 0:0 character devices, opaque
// directories marked with trusted.overlay.opaque), followed by a fixed VHD
// footer (layer.vhd). The image root also holds lost+found, which e2fsck
// wants; mounting code uses LowerDir so the container never sees it.
//
// The tar is checked entry by entry: names and hard links must stay inside
// the layer, relative symlinks may not climb above it, device nodes are
// refused, and overlayfs xattrs in the tar are dropped (only this package
// decides what is opaque).
//
// Whiteouts follow the OCI image spec: they apply only to lower layers,
// whatever their position in the tar, while the layer's own entries behave as
// an archive extracted in order (a directory over a directory merges,
// anything else replaces). Conversion therefore reads the tar twice: pass 1
// reads headers only and builds the layer's final tree (memory grows with the
// entry count, never with file sizes); pass 2 writes that tree to hcsshim's
// tar2ext4, reading file content from the tar in order. The layer's source
// is read once: pass 1 copies the tar into an unlinked spool file next to
// the output, which pass 2 reads, so a compressed layer is decompressed (and
// its digests computed) once. Its inode bitmaps
// lack the padding e2fsck expects, which is fixed afterwards so that every
// image passes `e2fsck -n -f`.
package layerconv

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"

	"github.com/layervisor/layervisor/pkg/layerconv/layerfmt"
	"github.com/layervisor/layervisor/pkg/vhd"
)

// ErrInvalidLayer marks a layer tar whose content is refused.
var ErrInvalidLayer = errors.New("invalid layer")

// PmemAlign is the unit the ext4 part of a layer image is padded to.
const PmemAlign = 2 << 20

// ContentDir is the directory of the image holding the layer's content.
const ContentDir = layerfmt.ContentDir

// FormatVersion is the layer image format Convert writes; stores record it
// and treat images of another version as absent.
const FormatVersion = layerfmt.Version

// LowerDir is the overlay lower directory of a layer image mounted at mnt.
func LowerDir(mnt string) string { return layerfmt.LowerDir(mnt) }

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	aufsPrefix     = ".wh..wh." // aufs bookkeeping (hard-link stash), not content
	overlayXattr   = "SCHILY.xattr.trusted.overlay."
	opaqueXattr    = "SCHILY.xattr.trusted.overlay.opaque"
)

var errConverterStopped = errors.New("ext4 converter stopped early")

// Stats describes a converted layer.
type Stats struct {
	Entries   int   // tar entries read
	FileBytes int64 // bytes of regular-file content written
	ImageSize int64 // size of the ext4 image, footer excluded
}

// Opener opens the uncompressed layer tar; Convert calls it once and reads
// the stream to its end before writing anything. A read error at the end of
// the stream (a digest mismatch) fails the conversion.
type Opener func() (io.ReadCloser, error)

// Convert reads the layer tar through open and writes the layer image to
// out, which must be empty. The tar is spooled to a temporary file in out's
// directory, removed before Convert returns. It stops early when ctx is
// cancelled.
func Convert(ctx context.Context, open Opener, out *os.File) (Stats, error) {
	var st Stats
	spool, err := os.CreateTemp(filepath.Dir(out.Name()), ".layer-tar-*")
	if err != nil {
		return st, fmt.Errorf("layer tar spool: %w", err)
	}
	// Unlinked at once where the OS allows it, so a crash leaves nothing.
	os.Remove(spool.Name())
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()
	tree, tarSize, err := scanOnce(ctx, open, spool, &st)
	if err != nil {
		return st, err
	}
	again := func() (io.ReadCloser, error) {
		return io.NopCloser(io.NewSectionReader(spool, 0, tarSize)), nil
	}
	pr, pw := io.Pipe()
	emitErr := make(chan error, 1)
	go func() {
		err := tree.emit(ctx, again, pw, &st)
		pw.CloseWithError(err)
		emitErr <- err
	}()
	convErr := tar2ext4.ConvertTarToExt4(pr, out)
	// Unblock the writer if the converter stopped early.
	pr.CloseWithError(errConverterStopped)
	eerr := <-emitErr
	if eerr != nil && !errors.Is(eerr, errConverterStopped) {
		return st, eerr // bad input or cancellation: the cause
	}
	if convErr != nil {
		return st, fmt.Errorf("convert layer to ext4: %w", convErr)
	}
	if eerr != nil {
		return st, eerr
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

// node is a name in the layer's final tree.
type node struct {
	typ byte // tar.TypeDir, TypeReg, TypeSymlink or TypeFifo (of the inode, for hard links too)
	// hdr is the entry of a directory (nil: implied by a descendant), a
	// symlink or a fifo; regular files are read again in pass 2.
	hdr *tar.Header
	src int // non-directories: ordinal of the entry that made the inode

	children  map[string]*node // directories
	whiteouts map[string]bool  // directories: names whited out in lower layers
	opaque    bool             // directories: hide lower layers' content
}

func newDir(hdr *tar.Header) *node {
	return &node{typ: tar.TypeDir, hdr: hdr, children: map[string]*node{}, whiteouts: map[string]bool{}}
}

// tree is the result of pass 1.
type tree struct {
	root    *node
	regName map[int]string // ordinal -> name of regular-file entries that made an inode
}

// walk returns the directory at p, creating missing directories when
// create is set. It returns nil if a component of p is not a directory
// (or is missing and create is unset).
func (t *tree) walk(p string, create bool) *node {
	n := t.root
	if p == "" {
		return n
	}
	for _, c := range strings.Split(p, "/") {
		child := n.children[c]
		if child == nil {
			if !create {
				return nil
			}
			child = newDir(nil)
			n.children[c] = child
		}
		if child.typ != tar.TypeDir {
			return nil
		}
		n = child
	}
	return n
}

// lookup returns the node at p, or nil.
func (t *tree) lookup(p string) *node {
	dir, base := path.Split(p)
	d := t.walk(strings.TrimSuffix(dir, "/"), false)
	if d == nil {
		return nil
	}
	return d.children[base]
}

// readTar opens the tar, calls fn for every entry with its ordinal, then
// reads the stream to its end so the opener can verify digests.
func readTar(ctx context.Context, open Opener, fn func(i int, hdr *tar.Header, tr *tar.Reader) error) (err error) {
	rc, err := open()
	if err != nil {
		return err
	}
	defer func() {
		if cerr := rc.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	tr := tar.NewReader(rc)
	for i := 0; ; i++ {
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
		if err := fn(i, hdr, tr); err != nil {
			return err
		}
	}
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("read layer tar: %w", err)
	}
	return nil
}

// scanOnce runs pass 1 on the tar open gives while copying it to spool; it
// returns the tree and the tar's size.
func scanOnce(ctx context.Context, open Opener, spool *os.File, st *Stats) (*tree, int64, error) {
	bw := bufio.NewWriterSize(spool, 1<<20)
	tee := func() (io.ReadCloser, error) {
		rc, err := open()
		if err != nil {
			return nil, err
		}
		return struct {
			io.Reader
			io.Closer
		}{io.TeeReader(rc, bw), rc}, nil
	}
	t, err := scan(ctx, tee, st)
	if err != nil {
		return nil, 0, err
	}
	if err := bw.Flush(); err != nil {
		return nil, 0, fmt.Errorf("layer tar spool: %w", err)
	}
	size, err := spool.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, 0, fmt.Errorf("layer tar spool: %w", err)
	}
	return t, size, nil
}

// scan is pass 1: it checks every entry and builds the layer's final tree.
func scan(ctx context.Context, open Opener, st *Stats) (*tree, error) {
	t := &tree{root: newDir(nil), regName: map[int]string{}}
	err := readTar(ctx, open, func(i int, hdr *tar.Header, _ *tar.Reader) error {
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		st.Entries++
		dropOverlayXattrs(hdr)
		if name == "" { // the root directory itself
			if hdr.Typeflag != tar.TypeDir {
				return fmt.Errorf("%w: root entry %q is not a directory", ErrInvalidLayer, hdr.Name)
			}
			t.root.hdr = hdr
			return nil
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		for _, c := range strings.Split(dir, "/") {
			if strings.HasPrefix(c, aufsPrefix) {
				return nil
			}
			if strings.HasPrefix(c, whiteoutPrefix) {
				return fmt.Errorf("%w: entry %q lies under a whiteout", ErrInvalidLayer, hdr.Name)
			}
		}
		switch {
		case base == opaqueMarker:
			// Under a non-directory of this layer, the marker is moot:
			// that entry already hides the lower layers' directory.
			if d := t.walk(dir, true); d != nil {
				d.opaque = true
			}
			return nil
		case strings.HasPrefix(base, aufsPrefix):
			return nil
		case strings.HasPrefix(base, whiteoutPrefix):
			x := strings.TrimPrefix(base, whiteoutPrefix)
			if x == "" || x == "." || x == ".." {
				return fmt.Errorf("%w: whiteout %q names no entry", ErrInvalidLayer, hdr.Name)
			}
			if d := t.walk(dir, true); d != nil {
				d.whiteouts[x] = true
			}
			return nil
		}
		n := &node{typ: hdr.Typeflag, hdr: hdr, src: i}
		switch hdr.Typeflag {
		case tar.TypeReg: // tar.Reader turns legacy TypeRegA into TypeReg
			n.hdr = nil
			t.regName[i] = name
		case tar.TypeDir:
			n = newDir(hdr)
		case tar.TypeFifo:
		case tar.TypeSymlink:
			if err := checkSymlink(name, hdr.Linkname); err != nil {
				return err
			}
		case tar.TypeLink:
			target, err := cleanName(hdr.Linkname)
			if err != nil || target == "" {
				return fmt.Errorf("%w: hard link %q -> %q escapes the layer", ErrInvalidLayer, hdr.Name, hdr.Linkname)
			}
			tn := t.lookup(target)
			if tn == nil || tn.typ == tar.TypeDir {
				return fmt.Errorf("%w: hard link %q -> %q: target is not a file of the layer", ErrInvalidLayer, hdr.Name, hdr.Linkname)
			}
			// The link shares the inode the target has now, even if the
			// target's name is replaced later in the tar.
			n = &node{typ: tn.typ, hdr: tn.hdr, src: tn.src}
		case tar.TypeChar, tar.TypeBlock:
			return fmt.Errorf("%w: %q is a device node (%d:%d); layers may not contain devices", ErrInvalidLayer, hdr.Name, hdr.Devmajor, hdr.Devminor)
		default:
			return fmt.Errorf("%w: %q has unsupported tar type %q", ErrInvalidLayer, hdr.Name, hdr.Typeflag)
		}
		parent := t.walk(dir, true)
		if parent == nil {
			return fmt.Errorf("%w: entry %q lies under a non-directory of the layer", ErrInvalidLayer, hdr.Name)
		}
		old := parent.children[base]
		if old != nil && old.typ == tar.TypeDir && n.typ == tar.TypeDir {
			old.hdr = hdr // a directory over a directory merges
			return nil
		}
		// Anything else replaces the old entry and, as in an extraction
		// onto the lower layers, what the lower layers had at this name:
		// a directory made here shows none of the lower one's content.
		if old != nil && n.typ == tar.TypeDir {
			n.opaque = true
		}
		parent.children[base] = n
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// dropOverlayXattrs removes the xattrs overlayfs interprets (opaque,
// redirect, metacopy...): only the converter decides what is opaque.
func dropOverlayXattrs(hdr *tar.Header) {
	hdr.Xattrs = nil // deprecated duplicate of the PAX records; tar.Writer would write it back
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, overlayXattr) {
			delete(hdr.PAXRecords, k)
		}
	}
}

// link is a name to write as a hard link to the first name of its inode.
type link struct{ name, target string }

// emit is pass 2: it writes the final tree as a tar for tar2ext4, with every
// name under ContentDir. Directories, symlinks, fifos and whiteouts come
// first (parents before children), then regular files in tar order (their
// content is read from the tar again), then hard links.
func (t *tree) emit(ctx context.Context, open Opener, w io.Writer, st *Stats) error {
	tw := tar.NewWriter(w)
	first := map[int]string{} // inode (source ordinal) -> first name written
	var links []link
	var walk func(n *node, p string) error
	walk = func(n *node, p string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := tw.WriteHeader(dirHeader(n, p)); err != nil {
			return fmt.Errorf("layer entry %q: %w", p, err)
		}
		names := make([]string, 0, len(n.children)+len(n.whiteouts))
		for c := range n.children {
			names = append(names, c)
		}
		for c := range n.whiteouts {
			if n.children[c] == nil {
				names = append(names, c)
			}
		}
		sort.Strings(names)
		for _, c := range names {
			cp := path.Join(p, c)
			child := n.children[c]
			switch {
			case child == nil: // whited out and not recreated here
				if n.opaque {
					continue // the opaque directory hides it already
				}
				h := &tar.Header{Name: cp, Typeflag: tar.TypeChar, Mode: 0o600, ModTime: time.Unix(0, 0)}
				if err := tw.WriteHeader(h); err != nil {
					return fmt.Errorf("whiteout %q: %w", cp, err)
				}
			case child.typ == tar.TypeDir:
				// A directory whited out and recreated in this layer shows
				// only this layer's content.
				if n.whiteouts[c] {
					child.opaque = true
				}
				if err := walk(child, cp); err != nil {
					return err
				}
			default:
				if f, ok := first[child.src]; ok {
					links = append(links, link{name: cp, target: f})
					continue
				}
				first[child.src] = cp
				if child.typ == tar.TypeReg {
					continue // written with its content below
				}
				h := *child.hdr
				h.Name, h.Format = cp, tar.FormatUnknown
				if err := tw.WriteHeader(&h); err != nil {
					return fmt.Errorf("layer entry %q: %w", cp, err)
				}
			}
		}
		return nil
	}
	if err := walk(t.root, ContentDir); err != nil {
		return err
	}
	err := readTar(ctx, open, func(i int, hdr *tar.Header, tr *tar.Reader) error {
		name, ok := t.regName[i]
		if !ok {
			return nil
		}
		cp, ok := first[i]
		if !ok {
			return nil // replaced later in the tar
		}
		// Both passes read the same bytes (pass 2 the spool of pass 1);
		// check anyway, as the tree is only valid for that tar.
		if hdr.Typeflag != tar.TypeReg || path.Clean(hdr.Name) != name {
			return fmt.Errorf("layer tar changed between passes: entry %d is %q, was %q", i, hdr.Name, name)
		}
		dropOverlayXattrs(hdr)
		h := *hdr
		h.Name, h.Format = cp, tar.FormatUnknown
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("layer entry %q: %w", name, err)
		}
		n, err := io.Copy(tw, tr)
		st.FileBytes += n
		if err != nil {
			return fmt.Errorf("layer entry %q: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, l := range links {
		if err := tw.WriteHeader(&tar.Header{Name: l.name, Linkname: l.target, Typeflag: tar.TypeLink}); err != nil {
			return fmt.Errorf("hard link %q: %w", l.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("layer tar: %w", err)
	}
	return nil
}

// dirHeader is the header written for directory n at p: its own entry's
// metadata (or root-owned 0755 for a directory only implied by its
// descendants), marked opaque when it hides the lower layers' content.
func dirHeader(n *node, p string) *tar.Header {
	h := &tar.Header{Mode: 0o755, ModTime: time.Unix(0, 0)}
	if n.hdr != nil {
		c := *n.hdr
		h = &c
		h.PAXRecords = nil
		for k, v := range n.hdr.PAXRecords {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords[k] = v
		}
	}
	h.Name, h.Typeflag, h.Format = p+"/", tar.TypeDir, tar.FormatUnknown
	if n.opaque {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords[opaqueXattr] = "y"
	}
	return h
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

// OpenBytes is an Opener of a tar held in memory.
func OpenBytes(b []byte) Opener {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}
