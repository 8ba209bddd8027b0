package cimfs

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// WalkTree calls fn, as Walk does, for the name at sub and every name below
// it: p is the slash path from the root, rel the path below sub ("" for sub
// itself). sub is "a/b" or `a\b`, compared case-insensitively; "" or "/" is
// the root. A sub that names nothing gives no calls.
func (img *Image) WalkTree(sub string, fn func(p, rel string, f *File) error) error {
	base := strings.Trim(strings.ReplaceAll(sub, `\`, "/"), "/")
	return img.Walk(func(p string, f *File) error {
		if rel, ok := below(p, base); ok {
			return fn(p, rel, f)
		}
		return nil
	})
}

// below reports whether p is base or a path under it, and the rest of p
// below base. The comparison is case-insensitive; the rest is cut from p
// itself, so it keeps the image's spelling whatever base's is.
func below(p, base string) (rel string, ok bool) {
	if base == "" {
		return p, true
	}
	if len(p) < len(base) || !strings.EqualFold(p[:len(base)], base) {
		return "", false
	}
	switch rest := p[len(base):]; {
	case rest == "":
		return "", true
	case rest[0] == '/':
		return rest[1:], true
	default:
		return "", false
	}
}

// ExtractOptions tune Extract.
type ExtractOptions struct {
	// Skipped, when set, is told of each reparse point (symlink,
	// junction) Extract leaves out.
	Skipped func(p string, reparseTag uint32)
}

// Extract copies the subtree at sub (a directory; "" is the root) into dest,
// which must not exist: directories and file contents, hard links as hard
// links, alternate streams as files named FILE:STREAM, last-write times.
// Reparse points are skipped; security descriptors and EAs, which have no
// Linux equivalent, are not copied. The tree is built in a temp directory
// beside dest and renamed to dest when complete: on any error nothing is
// left. A name that could escape its directory (a separator, ':', NUL, "."
// or "..") is an error. It returns how many names it visited, skipped ones
// included.
func (img *Image) Extract(dest, sub string, o ExtractOptions) (n int, err error) {
	if _, err := os.Lstat(dest); err == nil {
		return 0, fmt.Errorf("extract to %s: already exists", dest)
	}
	top, err := img.Stat(sub)
	if err != nil {
		return 0, err
	}
	if !top.IsDir() {
		return 0, fmt.Errorf("extract %s: %q is not a directory", img.Path(), sub)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dest)), ".cim-extract-*")
	if err != nil {
		return 0, fmt.Errorf("extract to %s: %w", dest, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	first := map[uint32]string{} // FileID → first extracted path, for hard links
	type dirTime struct {
		path string
		t    time.Time
	}
	var dirs []dirTime
	err = img.WalkTree(sub, func(p, rel string, f *File) error {
		if p != "" && badName(f.Name) {
			return fmt.Errorf("extract %s: unsafe name %q at %q", img.Path(), f.Name, p)
		}
		target := filepath.Join(tmp, filepath.FromSlash(rel))
		n++
		switch {
		case f.IsDir():
			if rel != "" {
				if err := os.Mkdir(target, 0o755); err != nil {
					return err
				}
			}
			dirs = append(dirs, dirTime{target, f.LastWriteTime})
			return nil
		case f.ReparseTag != 0:
			if o.Skipped != nil {
				o.Skipped(p, f.ReparseTag)
			}
			return nil
		}
		if prev, ok := first[f.ID]; ok {
			return os.Link(prev, target)
		}
		first[f.ID] = target
		r, err := f.Open()
		if err != nil {
			return err
		}
		if err := writeNew(target, r, f.LastWriteTime); err != nil {
			return err
		}
		ss, err := f.Streams()
		if err != nil {
			return err
		}
		for _, s := range ss {
			if strings.ContainsAny(s.Name, `/\`+"\x00") {
				return fmt.Errorf("extract %s: unsafe stream name %q on %q", img.Path(), s.Name, p)
			}
			sr, err := f.OpenStream(s.Name)
			if err != nil {
				return err
			}
			if err := writeNew(target+":"+s.Name, sr, f.LastWriteTime); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	// Directory times last, deepest first, once their contents are written.
	for i := len(dirs) - 1; i >= 0; i-- {
		if !dirs[i].t.IsZero() {
			os.Chtimes(dirs[i].path, dirs[i].t, dirs[i].t)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, dest); err != nil {
		return 0, fmt.Errorf("extract to %s: %w", dest, err)
	}
	return n, nil
}

// writeNew writes r to a new file at path with modification time mtime.
func writeNew(path string, r io.Reader, mtime time.Time) error {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	if !mtime.IsZero() {
		return os.Chtimes(path, mtime, mtime)
	}
	return nil
}
