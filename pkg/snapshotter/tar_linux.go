package snapshotter

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// tarUpper streams the content of an overlay upper directory as an OCI
// layer tar: 0/0 character devices become .wh. whiteouts, opaque directories
// get an opaque marker, and a directory renamed from a lower layer
// (redirect_dir) is written whole, as an opaque directory, from a read-only
// merged view of upper over lowers. The output is deterministic (sorted
// names), so Commit's digest and the conversion read the same stream.
func tarUpper(ctx context.Context, upper string, lowers []string) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		w := &upperWriter{ctx: ctx, tw: tar.NewWriter(pw), upper: upper, lowers: lowers, links: map[[2]uint64]string{}}
		var err error
		defer func() {
			// The tree is a client's: a bug it reaches here must fail
			// this Commit, not kill the daemon (serve's recovery covers
			// only the goroutines of calls).
			if r := recover(); r != nil {
				slog.ErrorContext(ctx, "commit: panic writing the layer tar", "upper", upper, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = fmt.Errorf("commit: internal error writing the layer tar of %s: %v", upper, r)
			}
			if uerr := w.unmountMerged(); err == nil {
				err = uerr
			}
			pw.CloseWithError(err)
		}()
		err = w.entry(upper, "", false)
		if err == nil {
			err = w.tw.Close()
		}
	}()
	return pr
}

type upperWriter struct {
	ctx    context.Context
	tw     *tar.Writer
	upper  string
	lowers []string
	merged string // mount point of the merged view, once needed
	links  map[[2]uint64]string
}

// entry writes the entry rel (relative to base; "" is the root) and,
// for a directory, everything below it. inMerged says base is the merged
// view, where whiteouts and overlay xattrs are already applied.
func (w *upperWriter) entry(base, rel string, inMerged bool) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	full := filepath.Join(base, rel)
	var st unix.Stat_t
	if err := unix.Lstat(full, &st); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	name := rel
	if rel == "" {
		name = "."
	}
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		Format:  tar.FormatPAX,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		if !inMerged && st.Rdev == 0 {
			return w.tw.WriteHeader(&tar.Header{Name: path.Join(path.Dir(rel), ".wh."+path.Base(rel)), Typeflag: tar.TypeReg, Mode: 0o600, ModTime: hdr.ModTime})
		}
		hdr.Typeflag = tar.TypeChar
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	case unix.S_IFBLK:
		hdr.Typeflag = tar.TypeBlock
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	case unix.S_IFSOCK:
		slog.WarnContext(w.ctx, "commit: skipping socket, tar cannot hold it", "path", full)
		return nil
	case unix.S_IFLNK:
		target, err := os.Readlink(full)
		if err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
	case unix.S_IFREG:
		key := [2]uint64{st.Dev, st.Ino}
		if st.Nlink > 1 {
			if first, ok := w.links[key]; ok {
				hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
				break
			}
			w.links[key] = rel
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size
	case unix.S_IFDIR:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	}
	if err := w.xattrs(full, hdr); err != nil {
		return err
	}

	redirect, opaque := false, false
	if hdr.Typeflag == tar.TypeDir && !inMerged {
		redirect = hasXattr(full, "trusted.overlay.redirect")
		v, _ := getXattr(full, "trusted.overlay.opaque")
		opaque = v == "y"
	}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("commit: %s: %w", full, err)
	}
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		f, err := os.Open(full)
		if err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		_, err = io.CopyN(w.tw, f, hdr.Size)
		f.Close()
		if err != nil {
			return fmt.Errorf("commit: %s: %w", full, err)
		}
	}
	if hdr.Typeflag != tar.TypeDir {
		return nil
	}
	if redirect {
		// A directory renamed from a lower layer: the new layer holds it
		// whole, hiding whatever lower layers have under its new name.
		m, err := w.mergedView()
		if err != nil {
			return err
		}
		base, inMerged, opaque = m, true, true
	}
	if opaque {
		if err := w.tw.WriteHeader(&tar.Header{Name: path.Join(rel, ".wh..wh..opq"), Typeflag: tar.TypeReg, Mode: 0o600, ModTime: hdr.ModTime}); err != nil {
			return err
		}
	}
	ents, err := os.ReadDir(filepath.Join(base, rel))
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	for _, e := range ents {
		if err := w.entry(base, path.Join(rel, e.Name()), inMerged); err != nil {
			return err
		}
	}
	return nil
}

// xattrs copies extended attributes, except overlayfs' own.
func (w *upperWriter) xattrs(p string, hdr *tar.Header) error {
	names, err := listXattr(p)
	if err != nil {
		return fmt.Errorf("commit: xattrs of %s: %w", p, err)
	}
	for _, n := range names {
		if strings.HasPrefix(n, "trusted.overlay.") {
			continue
		}
		v, err := getXattr(p, n)
		if err != nil {
			return fmt.Errorf("commit: xattr %s of %s: %w", n, p, err)
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+n] = v
	}
	return nil
}

// mergedView mounts upper over the lowers read-only, once.
func (w *upperWriter) mergedView() (string, error) {
	if w.merged != "" {
		return w.merged, nil
	}
	mp, err := os.MkdirTemp(filepath.Dir(w.upper), "merged-")
	if err != nil {
		return "", err
	}
	m := mount.Mount{Type: "overlay", Source: "overlay", Options: []string{
		"lowerdir=" + strings.Join(append([]string{w.upper}, w.lowers...), ":"),
		"redirect_dir=follow",
	}}
	if err := m.Mount(mp); err != nil {
		os.Remove(mp)
		return "", fmt.Errorf("commit: merged view of %s: %w", w.upper, err)
	}
	w.merged = mp
	return mp, nil
}

func (w *upperWriter) unmountMerged() error {
	if w.merged == "" {
		return nil
	}
	if err := unix.Unmount(w.merged, 0); err != nil {
		return fmt.Errorf("commit: unmount merged view %s: %w", w.merged, err)
	}
	return os.Remove(w.merged)
}

func listXattr(p string) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

func getXattr(p, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

func hasXattr(p, name string) bool {
	_, err := getXattr(p, name)
	return err == nil
}
