package ociimage

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// source gives access to the files of an image layout, in a directory or
// inside an uncompressed tar archive.
type source interface {
	// open returns the named file (slash-separated, relative) and its size.
	open(name string) (io.ReadCloser, int64, error)
	has(name string) bool
	Close() error
}

type dirSource struct{ root string }

func (d dirSource) open(name string) (io.ReadCloser, int64, error) {
	p, err := confined(d.root, name)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s: not a regular file", name)
	}
	return f, st.Size(), nil
}

func (d dirSource) has(name string) bool {
	p, err := confined(d.root, name)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

func (d dirSource) Close() error { return nil }

// confined joins a relative name to root, refusing escapes.
func confined(root, name string) (string, error) {
	if path.IsAbs(name) {
		return "", fmt.Errorf("path %q in the image is absolute", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("path %q escapes the image", name)
		}
	}
	return filepath.Join(root, filepath.FromSlash(path.Clean(name))), nil
}

// tarSource indexes an archive once by header offsets and reads members in
// place through section readers: nothing is extracted.
type tarSource struct {
	f       *os.File
	entries map[string]tarEntry
}

type tarEntry struct {
	off, size int64
	link      string // symlink or hard-link target, resolved at open
}

type offsetReader struct {
	f   *os.File
	off int64
}

func (r *offsetReader) Read(p []byte) (int, error) {
	n, err := r.f.ReadAt(p, r.off)
	r.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// Seek lets tar skip member data without reading it.
func (r *offsetReader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		r.off = off
	case io.SeekCurrent:
		r.off += off
	case io.SeekEnd:
		st, err := r.f.Stat()
		if err != nil {
			return 0, err
		}
		r.off = st.Size() + off
	}
	return r.off, nil
}

func openTar(p string) (*tarSource, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	or := &offsetReader{f: f}
	tr := tar.NewReader(or)
	ts := &tarSource{f: f, entries: map[string]tarEntry{}}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read archive %s: %w", p, err)
		}
		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		switch hdr.Typeflag {
		case tar.TypeReg: // tar.Reader turns legacy TypeRegA into TypeReg
			ts.entries[name] = tarEntry{off: or.off, size: hdr.Size}
		case tar.TypeSymlink:
			ts.entries[name] = tarEntry{link: path.Join(path.Dir(name), hdr.Linkname)}
		case tar.TypeLink:
			ts.entries[name] = tarEntry{link: strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")}
		}
	}
	if len(ts.entries) == 0 {
		f.Close()
		return nil, fmt.Errorf("archive %s has no files", p)
	}
	return ts, nil
}

func (t *tarSource) lookup(name string) (tarEntry, bool) {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	for i := 0; i < 8; i++ {
		e, ok := t.entries[name]
		if !ok || e.link == "" {
			return e, ok
		}
		name = strings.TrimPrefix(path.Clean("/"+e.link), "/")
	}
	return tarEntry{}, false
}

func (t *tarSource) open(name string) (io.ReadCloser, int64, error) {
	e, ok := t.lookup(name)
	if !ok {
		return nil, 0, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return io.NopCloser(io.NewSectionReader(t.f, e.off, e.size)), e.size, nil
}

func (t *tarSource) has(name string) bool { _, ok := t.lookup(name); return ok }

func (t *tarSource) Close() error { return t.f.Close() }

var errCompressedArchive = errors.New("the archive itself is compressed; decompress it first (e.g. gunzip or zstd -d)")

// openSource detects what path is.
func openSource(p string) (source, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return dirSource{root: p}, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	magic := make([]byte, 4)
	n, _ := io.ReadFull(f, magic)
	f.Close()
	if n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b || n == 4 && string(magic) == "\x28\xb5\x2f\xfd" {
		return nil, errCompressedArchive
	}
	return openTar(p)
}
