// Package layerconv turns an uncompressed OCI layer tar into a read-only
// layer image: an ext4 file system holding the layer's content under
// ContentDir, in overlayfs form (whiteouts as 0:0 character devices, opaque
// directories marked with trusted.overlay.opaque), followed by a fixed VHD
// footer (layer.vhd). The image root also holds lost+found, which e2fsck
// wants; mounting code uses LowerDir so the container never sees it.
//
// [Convert] is the entry point: it reads the tar through an [Opener] (called
// a second time for a layer that replaces its own entries) and writes the
// image to an empty file; on failure, including a digest mismatch found at
// the end of the stream, that file holds garbage for the caller to remove.
// Every image it writes passes `e2fsck -n -f`.
//
// The tar is untrusted and checked entry by entry: names and hard links must
// stay inside the layer, relative symlinks may not climb above it, overlayfs
// xattrs in the tar are dropped (only this package decides what is opaque),
// and device nodes are kept except a character device 0:0, which overlayfs
// would read as a whiteout. What a layer can make the converter hold is
// bounded ([MaxTreeNodes] and the limits beside it; memory grows with the
// names, never with file sizes): a layer over a limit is refused with a
// [*LimitError], and every refused layer with an error that is
// [ErrInvalidLayer].
//
// Whiteouts follow the OCI image spec: they apply only to lower layers,
// whatever their position in the tar, while the layer's own entries behave as
// an archive extracted in order (a directory over a directory merges,
// anything else replaces).
//
// How the conversion is pipelined (one or two passes, the spool, the
// goroutines, the fix-up after tar2ext4) is in README.md.
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

// Limits on what one layer may make the conversion hold. The converter
// keeps the layer's tree until the end and tar2ext4 keeps an inode and the
// full path of every name it writes, so without them a small archive of
// deep, unique paths grows memory without bound (a 480 KB gzip of 20 000
// paths 1 900 levels deep reached 24 GB). A layer over a limit is refused
// with a *LimitError, which is ErrInvalidLayer, before tar2ext4 sees the
// entry. Real layers are far below them: a Debian base layer has 10–40 k
// entries, paths under 30 components and about 60 bytes long.
const (
	// MaxEntries bounds the tar entries of a layer, each of which the
	// two-pass conversion remembers.
	MaxEntries = 1 << 21
	// MaxTreeNodes bounds the names of the layer's tree: entries,
	// directories implied by deeper names, whiteouts. Each costs about
	// 1 KiB, here and in tar2ext4 together.
	MaxTreeNodes = 1 << 20
	// MaxNameBytes bounds the bytes of names the conversion holds: every
	// entry's path, the full path of every implied directory (tar2ext4
	// keeps one per inode), and the link targets and xattrs of the entries
	// kept to the end (directories, symlinks, devices, fifos). Each byte is
	// held about twice, here and in tar2ext4.
	MaxNameBytes = 128 << 20
	// MaxPathDepth bounds the components of an entry's path: tar2ext4
	// rebuilds every parent path of each entry it writes, work that grows
	// with depth × length.
	MaxPathDepth = 128
	// MaxPathLen is Linux's PATH_MAX less its NUL: the longest entry name
	// or symlink target.
	MaxPathLen = 4095
	// MaxNameLen is NAME_MAX, ext4's longest name of one component.
	MaxNameLen = 255
)

// LimitError is a layer refused for going over one of the limits above.
// errors.Is(err, ErrInvalidLayer) holds for it.
type LimitError struct {
	Limit string // the constant's name, e.g. "MaxPathDepth"
	Max   int64  // the limit applied
	Entry string // the tar entry that went over it
	Got   string // what the entry or the layer reached
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%v: entry %s: %s, over the limit layerconv.%s = %d", ErrInvalidLayer, clipName(e.Entry), e.Got, e.Limit, e.Max)
}

// Is makes a LimitError an ErrInvalidLayer.
func (e *LimitError) Is(target error) bool { return target == ErrInvalidLayer }

// clipName quotes an entry name for a message, shortened when long.
func clipName(s string) string {
	const max = 96
	if len(s) <= max {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:max], len(s))
}

// limits are the cumulative limits a conversion applies (tests lower them).
type limits struct {
	entries, nodes int
	nameBytes      int64
}

var defaultLimits = limits{entries: MaxEntries, nodes: MaxTreeNodes, nameBytes: MaxNameBytes}

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
	xattrPAX       = "SCHILY.xattr."
	overlayXattr   = "SCHILY.xattr.trusted.overlay."
	opaqueXattr    = "SCHILY.xattr.trusted.overlay.opaque"
)

// Stats describes a converted layer.
type Stats struct {
	Entries   int   // tar entries read
	FileBytes int64 // bytes of regular-file content written
	ImageSize int64 // size of the ext4 image, footer excluded
}

// Opener opens the uncompressed layer tar. Convert calls it once, or a
// second time for a layer that replaces its own entries (see Convert), and
// reads the stream to its end. A read error at the end of the stream (a
// digest mismatch) fails the conversion.
type Opener func() (io.ReadCloser, error)

// errTwoPass stops the one-pass conversion of a layer that needs the
// two-pass one.
var errTwoPass = errors.New("layer replaces its own entries")

// Convert reads the layer tar through open and writes the layer image to
// out, which must be empty. It stops early when ctx is cancelled; on
// failure out holds garbage for the caller to remove.
//
// Most layers never name an entry twice: those are converted in one pass,
// each entry written to the image as it is read (directories and whiteouts,
// whose final form depends on the whole tar, at the end). A layer that
// replaces one of its own entries is converted again in two passes, which
// needs the final tree before writing: the tar is spooled to a temporary
// file in out's directory, removed before Convert returns.
func Convert(ctx context.Context, open Opener, out *os.File) (Stats, error) {
	return convertLayer(ctx, open, out, true, defaultLimits)
}

// convertLayer is Convert with the given limits; without twoPass it fails
// with errTwoPass instead.
func convertLayer(ctx context.Context, open Opener, out *os.File, twoPass bool, lim limits) (Stats, error) {
	open = aheadOpener(open)
	var st Stats
	err := convertOnePass(ctx, open, out, &st, lim)
	if errors.Is(err, errTwoPass) && twoPass {
		st = Stats{}
		if _, err := out.Seek(0, io.SeekStart); err != nil {
			return st, fmt.Errorf("layer image: %w", err)
		}
		if err := out.Truncate(0); err != nil {
			return st, fmt.Errorf("layer image: %w", err)
		}
		err = convertTwoPass(ctx, open, out, &st, lim)
	}
	if err != nil {
		return st, err
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

// toExt4 runs tar2ext4 on what write writes, concurrently, joined by a
// buffered pipe. Errors of write (bad input, cancellation) come first.
func toExt4(out *os.File, write func(w io.Writer) error) error {
	p := newPipe()
	convErr := make(chan error, 1)
	go func() {
		err := tar2ext4.ConvertTarToExt4(p, newWritebackFile(out))
		p.CloseRead() // unblocks the writer if the converter stopped early
		convErr <- err
	}()
	err := write(p)
	p.CloseWrite(err)
	cerr := <-convErr
	if err != nil && !errors.Is(err, errPipeClosed) {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("convert layer to ext4: %w", cerr)
	}
	return err // errPipeClosed with no converter error: cannot happen
}

// convertOnePass writes each entry as it reads it: non-directories at
// once (under ContentDir; tar2ext4 makes their parent directories), then
// every directory with its final metadata and the whiteouts. It gives
// errTwoPass, having written part of the image, when an entry replaces an
// earlier one that is not a directory merged with it.
func convertOnePass(ctx context.Context, open Opener, out *os.File, st *Stats, lim limits) error {
	t := newTree(lim, false)
	return toExt4(out, func(w io.Writer) error {
		tw := tar.NewWriter(w)
		buf := make([]byte, 64<<10) // one copy buffer for every file
		err := readTar(ctx, open, func(i int, hdr *tar.Header, tr *tar.Reader) error {
			a, err := t.add(i, hdr, st)
			if err != nil {
				return err
			}
			if a.replaced {
				return errTwoPass
			}
			if a.n == nil || a.n.typ == tar.TypeDir {
				return nil // written at the end
			}
			cp := path.Join(ContentDir, a.name)
			h := *hdr
			h.Name, h.Format = cp, tar.FormatUnknown
			if hdr.Typeflag == tar.TypeLink {
				h = tar.Header{Name: cp, Linkname: path.Join(ContentDir, a.link), Typeflag: tar.TypeLink}
			}
			if err := tw.WriteHeader(&h); err != nil {
				return fmt.Errorf("layer entry %q: %w", a.name, err)
			}
			if hdr.Typeflag == tar.TypeReg {
				n, err := io.CopyBuffer(tw, tr, buf)
				st.FileBytes += n
				if err != nil {
					return fmt.Errorf("layer entry %q: %w", a.name, err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := t.writeDirs(ctx, tw, nil); err != nil {
			return err
		}
		if err := tw.Close(); err != nil {
			return fmt.Errorf("layer tar: %w", err)
		}
		return nil
	})
}

// convertTwoPass reads the tar once to build the layer's final tree while
// spooling it, then writes the tree, reading file content from the spool.
func convertTwoPass(ctx context.Context, open Opener, out *os.File, st *Stats, lim limits) error {
	spool, err := os.CreateTemp(filepath.Dir(out.Name()), ".layer-tar-*")
	if err != nil {
		return fmt.Errorf("layer tar spool: %w", err)
	}
	// Unlinked at once where the OS allows it, so a crash leaves nothing.
	os.Remove(spool.Name())
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()
	tree, tarSize, err := scanOnce(ctx, open, spool, st, lim)
	if err != nil {
		return err
	}
	again := func() (io.ReadCloser, error) {
		return io.NopCloser(bufio.NewReaderSize(io.NewSectionReader(spool, 0, tarSize), 1<<20)), nil
	}
	return toExt4(out, func(w io.Writer) error { return tree.emit(ctx, again, w, st) })
}

// node is a name in the layer's final tree.
type node struct {
	// typ is tar.TypeDir, TypeReg, TypeSymlink, TypeFifo, TypeChar or
	// TypeBlock (of the inode, for hard links too).
	typ byte
	// hdr is the entry of a directory (nil: implied by a descendant), a
	// symlink, a fifo or a device; regular files are read again in pass 2.
	hdr *tar.Header
	src int // non-directories: ordinal of the entry that made the inode

	children  map[string]*node // directories
	whiteouts map[string]bool  // directories: names whited out in lower layers (nil: none)
	opaque    bool             // directories: hide lower layers' content
}

func newDir(hdr *tar.Header) *node {
	return &node{typ: tar.TypeDir, hdr: hdr, children: map[string]*node{}}
}

// tree is the layer's final tree, as far as the tar has been read, and
// what it has cost against the limits.
type tree struct {
	root *node
	// regName maps the ordinal of each regular-file entry that made an
	// inode to its name; only the two-pass conversion needs it (nil otherwise).
	regName map[int]string

	lim     limits
	entries int   // tar entries read
	nodes   int   // names created: entries, implied directories, whiteouts
	held    int64 // bytes of names, link targets and xattrs held (see MaxNameBytes)
}

func newTree(lim limits, twoPass bool) *tree {
	t := &tree{root: newDir(nil), lim: lim}
	if twoPass {
		t.regName = map[int]string{}
	}
	return t
}

// charge counts new names and newly held bytes on behalf of entry, and
// fails once the layer goes over MaxTreeNodes or MaxNameBytes.
func (t *tree) charge(entry string, nodes int, bytes int64) error {
	t.nodes += nodes
	t.held += bytes
	switch {
	case t.nodes > t.lim.nodes:
		return &LimitError{Limit: "MaxTreeNodes", Max: int64(t.lim.nodes), Entry: entry,
			Got: fmt.Sprintf("the layer's tree reaches %d names", t.nodes)}
	case t.held > t.lim.nameBytes:
		return &LimitError{Limit: "MaxNameBytes", Max: t.lim.nameBytes, Entry: entry,
			Got: fmt.Sprintf("the names the conversion holds reach %d bytes", t.held)}
	}
	return nil
}

// dir returns the directory at p, or nil if a component of p is missing
// or not a directory.
func (t *tree) dir(p string) *node {
	n := t.root
	for rest := p; rest != "" && n != nil; {
		var c string
		c, rest, _ = strings.Cut(rest, "/")
		n = n.children[c]
		if n != nil && n.typ != tar.TypeDir {
			return nil
		}
	}
	return n
}

// mkdirs returns the directory at p, creating the missing ones (charged
// to entry, with their full path: tar2ext4 holds it); nil if a component
// of p is not a directory.
func (t *tree) mkdirs(p, entry string) (*node, error) {
	n := t.root
	for i := 0; i < len(p); {
		end := len(p)
		if j := strings.IndexByte(p[i:], '/'); j >= 0 {
			end = i + j
		}
		c := p[i:end]
		child := n.children[c]
		if child == nil {
			if err := t.charge(entry, 1, int64(end)); err != nil {
				return nil, err
			}
			child = newDir(nil)
			n.children[c] = child
		}
		if child.typ != tar.TypeDir {
			return nil, nil
		}
		n = child
		i = end + 1
	}
	return n, nil
}

// lookup returns the node at p, or nil.
func (t *tree) lookup(p string) *node {
	dir, base := path.Split(p)
	d := t.dir(strings.TrimSuffix(dir, "/"))
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

// aheadOpener opens through open and decompresses ahead of the reader, in
// a goroutine of its own.
func aheadOpener(open Opener) Opener {
	return func() (io.ReadCloser, error) {
		rc, err := open()
		if err != nil {
			return nil, err
		}
		return readAhead(rc), nil
	}
}

// scanOnce runs pass 1 on the tar open gives while copying it to spool; it
// returns the tree and the tar's size.
func scanOnce(ctx context.Context, open Opener, spool *os.File, st *Stats, lim limits) (*tree, int64, error) {
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
	t, err := scan(ctx, tee, st, lim)
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
func scan(ctx context.Context, open Opener, st *Stats, lim limits) (*tree, error) {
	t := newTree(lim, true)
	err := readTar(ctx, open, func(i int, hdr *tar.Header, _ *tar.Reader) error {
		_, err := t.add(i, hdr, st)
		return err
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// added says what an entry did to the tree.
type added struct {
	name string // the entry's clean name
	// n is the node the entry made: nil for the root, whiteouts, opaque
	// markers, skipped entries and a directory merged into an earlier one.
	n        *node
	link     string // hard links: the clean name of the target
	replaced bool   // n took the place of an earlier entry of the layer
}

// add checks entry i and applies it to the tree.
func (t *tree) add(i int, hdr *tar.Header, st *Stats) (added, error) {
	if t.entries++; t.entries > t.lim.entries {
		return added{}, &LimitError{Limit: "MaxEntries", Max: int64(t.lim.entries), Entry: hdr.Name,
			Got: fmt.Sprintf("tar entry number %d", t.entries)}
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return added{}, err
	}
	if err := checkPathLimits(hdr.Name, name); err != nil {
		return added{}, err
	}
	a := added{name: name}
	st.Entries++
	trimHeader(hdr)
	// The name stays referenced (map keys, regName, headers) to the end.
	if err := t.charge(hdr.Name, 0, int64(len(name))); err != nil {
		return a, err
	}
	if name == "" { // the root directory itself
		if hdr.Typeflag != tar.TypeDir {
			return a, fmt.Errorf("%w: root entry %q is not a directory", ErrInvalidLayer, hdr.Name)
		}
		if err := t.charge(hdr.Name, 0, heldBytes(hdr)); err != nil {
			return a, err
		}
		t.root.hdr = hdr
		return a, nil
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	for _, c := range strings.Split(dir, "/") {
		if strings.HasPrefix(c, aufsPrefix) {
			return a, nil
		}
		if strings.HasPrefix(c, whiteoutPrefix) {
			return a, fmt.Errorf("%w: entry %q lies under a whiteout", ErrInvalidLayer, hdr.Name)
		}
	}
	switch {
	case base == opaqueMarker:
		// Under a non-directory of this layer, the marker is moot:
		// that entry already hides the lower layers' directory.
		d, err := t.mkdirs(dir, hdr.Name)
		if d != nil {
			d.opaque = true
		}
		return a, err
	case strings.HasPrefix(base, aufsPrefix):
		return a, nil
	case strings.HasPrefix(base, whiteoutPrefix):
		x := strings.TrimPrefix(base, whiteoutPrefix)
		if x == "" || x == "." || x == ".." {
			return a, fmt.Errorf("%w: whiteout %q names no entry", ErrInvalidLayer, hdr.Name)
		}
		d, err := t.mkdirs(dir, hdr.Name)
		if d == nil || err != nil {
			return a, err
		}
		if !d.whiteouts[x] {
			if err := t.charge(hdr.Name, 1, 0); err != nil {
				return a, err
			}
			if d.whiteouts == nil {
				d.whiteouts = map[string]bool{}
			}
			d.whiteouts[x] = true
		}
		return a, nil
	}
	n := &node{typ: hdr.Typeflag, hdr: hdr, src: i}
	switch hdr.Typeflag {
	case tar.TypeReg: // tar.Reader turns legacy TypeRegA into TypeReg
		n.hdr = nil
		if t.regName != nil {
			t.regName[i] = name
		}
	case tar.TypeDir:
		n = newDir(hdr)
	case tar.TypeFifo:
	case tar.TypeChar, tar.TypeBlock:
		if err := checkDevice(hdr); err != nil {
			return a, err
		}
	case tar.TypeSymlink:
		if len(hdr.Linkname) > MaxPathLen {
			return a, &LimitError{Limit: "MaxPathLen", Max: MaxPathLen, Entry: hdr.Name,
				Got: fmt.Sprintf("symlink target of %d bytes", len(hdr.Linkname))}
		}
		if err := checkSymlink(name, hdr.Linkname); err != nil {
			return a, err
		}
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil || target == "" {
			return a, fmt.Errorf("%w: hard link %q -> %q escapes the layer", ErrInvalidLayer, hdr.Name, hdr.Linkname)
		}
		tn := t.lookup(target)
		if tn == nil || tn.typ == tar.TypeDir {
			return a, fmt.Errorf("%w: hard link %q -> %q: target is not a file of the layer", ErrInvalidLayer, hdr.Name, hdr.Linkname)
		}
		// The link shares the inode the target has now, even if the
		// target's name is replaced later in the tar.
		n = &node{typ: tn.typ, hdr: tn.hdr, src: tn.src}
		a.link = target
	default:
		return a, fmt.Errorf("%w: %q has unsupported tar type %q", ErrInvalidLayer, hdr.Name, hdr.Typeflag)
	}
	if n.hdr == hdr {
		if err := t.charge(hdr.Name, 0, heldBytes(hdr)); err != nil {
			return a, err
		}
	}
	parent, err := t.mkdirs(dir, hdr.Name)
	if err != nil {
		return a, err
	}
	if parent == nil {
		return a, fmt.Errorf("%w: entry %q lies under a non-directory of the layer", ErrInvalidLayer, hdr.Name)
	}
	old := parent.children[base]
	if old != nil && old.typ == tar.TypeDir && n.typ == tar.TypeDir {
		old.hdr = hdr // a directory over a directory merges
		return a, nil
	}
	if old == nil {
		if err := t.charge(hdr.Name, 1, 0); err != nil {
			return a, err
		}
	}
	// Anything else replaces the old entry and, as in an extraction
	// onto the lower layers, what the lower layers had at this name:
	// a directory made here shows none of the lower one's content.
	if old != nil && n.typ == tar.TypeDir {
		n.opaque = true
	}
	parent.children[base] = n
	a.n, a.replaced = n, old != nil
	return a, nil
}

// checkPathLimits refuses a name (clean, relative) over MaxPathLen,
// MaxPathDepth or MaxNameLen. A whiteout is measured by the name it
// deletes: its ".wh." prefix is not part of what the image holds.
func checkPathLimits(raw, name string) error {
	if name == "" {
		return nil
	}
	wh := 0
	if strings.HasPrefix(path.Base(name), whiteoutPrefix) {
		wh = len(whiteoutPrefix)
	}
	if n := len(name) - wh; n > MaxPathLen {
		return &LimitError{Limit: "MaxPathLen", Max: MaxPathLen, Entry: raw, Got: fmt.Sprintf("path of %d bytes", n)}
	}
	if d := strings.Count(name, "/") + 1; d > MaxPathDepth {
		return &LimitError{Limit: "MaxPathDepth", Max: MaxPathDepth, Entry: raw, Got: fmt.Sprintf("path of %d components", d)}
	}
	for rest := name; rest != ""; {
		var c string
		c, rest, _ = strings.Cut(rest, "/")
		n := len(c)
		if rest == "" {
			n -= wh
		}
		if n > MaxNameLen {
			return &LimitError{Limit: "MaxNameLen", Max: MaxNameLen, Entry: raw, Got: fmt.Sprintf("component of %d bytes", n)}
		}
	}
	return nil
}

// checkDevice refuses device numbers Linux cannot hold (a 12-bit major, a
// 20-bit minor: tar2ext4 would wrap larger ones silently, some to 0:0) and
// a character device 0:0, which is how overlayfs marks a whiteout: in the
// image it would hide the lower layers' entry instead of being a device.
// The OCI spec marks whiteouts by ".wh." names only, so such an entry is a
// device the layer format cannot carry.
func checkDevice(hdr *tar.Header) error {
	if hdr.Devmajor < 0 || hdr.Devmajor > 0xfff || hdr.Devminor < 0 || hdr.Devminor > 0xfffff {
		return fmt.Errorf("%w: device %q has number %d:%d, beyond Linux's 12-bit major and 20-bit minor",
			ErrInvalidLayer, hdr.Name, hdr.Devmajor, hdr.Devminor)
	}
	if hdr.Typeflag == tar.TypeChar && hdr.Devmajor == 0 && hdr.Devminor == 0 {
		return fmt.Errorf("%w: %q is a character device 0:0, which an overlayfs layer holds only as a whiteout (whiteouts are %q entries in a layer tar)",
			ErrInvalidLayer, hdr.Name, whiteoutPrefix+path.Base(hdr.Name))
	}
	return nil
}

// trimHeader keeps of hdr what the image needs. It drops the xattrs
// overlayfs interprets (opaque, redirect, metacopy...: only the converter
// decides what is opaque) and what tar2ext4 ignores (PAX records other
// than xattrs, user and group names), which the tree would otherwise hold
// to the end.
func trimHeader(hdr *tar.Header) {
	hdr.Xattrs = nil // deprecated duplicate of the PAX records; tar.Writer would write it back
	hdr.Uname, hdr.Gname = "", ""
	for k := range hdr.PAXRecords {
		if !strings.HasPrefix(k, xattrPAX) || strings.HasPrefix(k, overlayXattr) {
			delete(hdr.PAXRecords, k)
		}
	}
}

// heldBytes is what a header kept in the tree holds besides its name.
func heldBytes(hdr *tar.Header) int64 {
	n := int64(len(hdr.Linkname))
	for k, v := range hdr.PAXRecords {
		n += int64(len(k) + len(v))
	}
	return n
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
	err := t.writeDirs(ctx, tw, func(n *node, cp string) error {
		if f, ok := first[n.src]; ok {
			links = append(links, link{name: cp, target: f})
			return nil
		}
		first[n.src] = cp
		if n.typ == tar.TypeReg {
			return nil // written with its content below
		}
		h := *n.hdr
		h.Name, h.Format = cp, tar.FormatUnknown
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("layer entry %q: %w", cp, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	buf := make([]byte, 64<<10) // one copy buffer for every file
	err = readTar(ctx, open, func(i int, hdr *tar.Header, tr *tar.Reader) error {
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
		trimHeader(hdr)
		h := *hdr
		h.Name, h.Format = cp, tar.FormatUnknown
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("layer entry %q: %w", name, err)
		}
		n, err := io.CopyBuffer(tw, tr, buf)
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

// writeDirs writes every directory of the tree under ContentDir (parents
// before children) with its final metadata, and the whiteouts it holds;
// it calls other, if set, for every other name.
func (t *tree) writeDirs(ctx context.Context, tw *tar.Writer, other func(n *node, cp string) error) error {
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
			case other != nil:
				if err := other(child, cp); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(t.root, ContentDir)
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
		return "", fmt.Errorf("%w: entry %s has an absolute path", ErrInvalidLayer, clipName(name))
	}
	for rest := name; rest != ""; {
		var part string
		part, rest, _ = strings.Cut(rest, "/")
		if part == ".." {
			return "", fmt.Errorf("%w: entry %s climbs out of the layer with \"..\"", ErrInvalidLayer, clipName(name))
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
