// Package whiteouttest is the table of OCI whiteout cases within one layer
// that the converter, the VM and containerd are checked against: a lower
// layer with the same content in every case directory, an upper layer with
// each case's entries, and the merged view the OCI image spec defines.
//
// The spec decides (image-spec layer.md, "Whiteouts"): a whiteout or opaque
// marker applies only to lower layers, wherever it is in the tar; the
// layer's own entries behave as an archive extracted in order (a directory
// over a directory merges, anything else replaces, and replacing a name
// also removes what the lower layers had there).
package whiteouttest

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/layervisor/layervisor/internal/imagebuild"
)

// Top is the directory holding one subdirectory per case.
const Top = "wt"

// Case is one combination, its entries relative to its case directory.
type Case struct {
	Name  string
	Upper []imagebuild.Entry
	Del   []string          // subtrees of the lower view that disappear
	Set   map[string]string // entries of the merged view that are new or changed
	// Containerd is how containerd 1.6's applier handles the case (measured
	// on Debian's 1.6.20): ContainerdAgrees, ContainerdRefuses or
	// ContainerdWrongView.
	Containerd string
}

// How containerd's applier handles a case.
const (
	ContainerdAgrees    = ""
	ContainerdRefuses   = "refuses the layer"
	ContainerdWrongView = "wrong merged view"
)

var (
	file    = imagebuild.File
	dir     = imagebuild.Dir
	symlink = imagebuild.Symlink
	wh      = imagebuild.Whiteout
	opq     = imagebuild.Opaque
)

// hard is a hard link whose header carries the target's mode, as image
// builders write them (appliers such as containerd chmod the inode to it).
func hard(name, target string, mode int64) imagebuild.Entry {
	e := imagebuild.Hardlink(name, target)
	e.Header.Mode = mode
	return e
}

// lower is every case directory's content in the lower layer; lowerView is
// how it looks.
var lower = []imagebuild.Entry{
	file("keep", "keep", 0o644),
	dir("x", 0o755), file("x/old", "old", 0o644),
	dir("x/sub", 0o755), file("x/sub/deep", "deep", 0o644),
	file("y", "lower-y", 0o644),
	symlink("z", "y"),
}

var lowerView = map[string]string{
	"keep": "f 644 keep",
	"x":    "d 755", "x/old": "f 644 old", "x/sub": "d 755", "x/sub/deep": "f 644 deep",
	"y": "f 644 lower-y",
	"z": "l y",
}

// Cases is the table. Descriptions: "d MODE", "f MODE CONTENT",
// "l TARGET", "p MODE" (octal modes without leading zero).
var Cases = []Case{
	{Name: "whiteout-then-file", Upper: []imagebuild.Entry{wh("y"), file("y", "new", 0o600)},
		Set: map[string]string{"y": "f 600 new"}},
	{Name: "file-then-whiteout", Upper: []imagebuild.Entry{file("y", "new", 0o600), wh("y")},
		Set: map[string]string{"y": "f 600 new"}, Containerd: ContainerdRefuses},
	{Name: "whiteout-then-dir", Upper: []imagebuild.Entry{wh("x"), dir("x", 0o750), file("x/n", "n", 0o644)},
		Del: []string{"x"}, Set: map[string]string{"x": "d 750", "x/n": "f 644 n"}, Containerd: ContainerdWrongView},
	{Name: "dir-then-whiteout", Upper: []imagebuild.Entry{dir("x", 0o750), file("x/n", "n", 0o644), wh("x")},
		Del: []string{"x"}, Set: map[string]string{"x": "d 750", "x/n": "f 644 n"}, Containerd: ContainerdRefuses},
	{Name: "whiteout-then-symlink", Upper: []imagebuild.Entry{wh("x"), symlink("x", "keep")},
		Del: []string{"x"}, Set: map[string]string{"x": "l keep"}},
	{Name: "symlink-then-whiteout", Upper: []imagebuild.Entry{symlink("x", "keep"), wh("x")},
		Del: []string{"x"}, Set: map[string]string{"x": "l keep"}, Containerd: ContainerdRefuses},
	{Name: "whiteout-file-then-dir", Upper: []imagebuild.Entry{wh("y"), dir("y", 0o755), file("y/n", "n", 0o644)},
		Set: map[string]string{"y": "d 755", "y/n": "f 644 n"}},
	{Name: "opaque-before-entries", Upper: []imagebuild.Entry{dir("x", 0o755), opq("x"), file("x/n", "n", 0o644)},
		Del: []string{"x"}, Set: map[string]string{"x": "d 755", "x/n": "f 644 n"}},
	{Name: "opaque-after-entries", Upper: []imagebuild.Entry{dir("x", 0o755), file("x/n", "n", 0o644), opq("x")},
		Del: []string{"x"}, Set: map[string]string{"x": "d 755", "x/n": "f 644 n"}},
	{Name: "opaque-before-dir-entry", Upper: []imagebuild.Entry{opq("x"), dir("x", 0o711), file("x/n", "n", 0o644)},
		Del: []string{"x"}, Set: map[string]string{"x": "d 711", "x/n": "f 644 n"}},
	{Name: "opaque-only", Upper: []imagebuild.Entry{dir("x", 0o755), opq("x")},
		Del: []string{"x"}, Set: map[string]string{"x": "d 755"}},
	{Name: "opaque-and-whiteout", Upper: []imagebuild.Entry{dir("x", 0o755), wh("x/old"), opq("x"), file("x/n", "n", 0o644)},
		Del: []string{"x"}, Set: map[string]string{"x": "d 755", "x/n": "f 644 n"}, Containerd: ContainerdWrongView},
	{Name: "file-to-dir", Upper: []imagebuild.Entry{file("y", "v1", 0o644), dir("y", 0o755), file("y/n", "n", 0o644)},
		Set: map[string]string{"y": "d 755", "y/n": "f 644 n"}},
	{Name: "dir-to-file", Upper: []imagebuild.Entry{dir("x", 0o755), file("x/n", "n", 0o644), file("x", "now a file", 0o644)},
		Del: []string{"x"}, Set: map[string]string{"x": "f 644 now a file"}},
	{Name: "dir-to-symlink", Upper: []imagebuild.Entry{dir("x", 0o755), file("x/n", "n", 0o644), symlink("x", "keep")},
		Del: []string{"x"}, Set: map[string]string{"x": "l keep"}, Containerd: ContainerdRefuses},
	{Name: "symlink-to-dir", Upper: []imagebuild.Entry{symlink("z", "keep"), dir("z", 0o755), file("z/n", "n", 0o644)},
		Set: map[string]string{"z": "d 755", "z/n": "f 644 n"}},
	{Name: "lower-symlink-to-dir", Upper: []imagebuild.Entry{dir("z", 0o755), file("z/n", "n", 0o644)},
		Set: map[string]string{"z": "d 755", "z/n": "f 644 n"}},
	{Name: "dir-file-dir", Upper: []imagebuild.Entry{dir("x", 0o755), file("x/n1", "1", 0o644), file("x", "f", 0o644), dir("x", 0o755), file("x/n2", "2", 0o644)},
		Del: []string{"x"}, Set: map[string]string{"x": "d 755", "x/n2": "f 644 2"}, Containerd: ContainerdWrongView},
	{Name: "dir-over-dir-merges", Upper: []imagebuild.Entry{dir("x", 0o700), file("x/n1", "1", 0o644), dir("x", 0o750), file("x/n2", "2", 0o644)},
		Set: map[string]string{"x": "d 750", "x/n1": "f 644 1", "x/n2": "f 644 2"}},
	{Name: "duplicate-file", Upper: []imagebuild.Entry{file("y", "one", 0o644), file("y", "two", 0o640)},
		Set: map[string]string{"y": "f 640 two"}},
	{Name: "duplicate-whiteout", Upper: []imagebuild.Entry{wh("y"), wh("y")},
		Del: []string{"y"}, Containerd: ContainerdRefuses},
	{Name: "whiteout-under-dir-replaced-by-file", Upper: []imagebuild.Entry{wh("x/old"), wh("x/sub/deep"), file("x", "f", 0o644)},
		Del: []string{"x"}, Set: map[string]string{"x": "f 644 f"}},
	{Name: "whiteout-under-dir-replaced-twice", Upper: []imagebuild.Entry{wh("x/old"), file("x", "f", 0o644), dir("x", 0o755), file("x/n", "n", 0o644)},
		Del: []string{"x"}, Set: map[string]string{"x": "d 755", "x/n": "f 644 n"}, Containerd: ContainerdWrongView},
	{Name: "whiteout-nested", Upper: []imagebuild.Entry{wh("x/sub/deep")},
		Del: []string{"x/sub/deep"}},
	{Name: "whiteout-recreated-dir-inner-whiteout", Upper: []imagebuild.Entry{wh("x"), dir("x", 0o755), file("x/old", "new old", 0o644), wh("x/old")},
		Del: []string{"x"}, Set: map[string]string{"x": "d 755", "x/old": "f 644 new old"}, Containerd: ContainerdRefuses},
	{Name: "hardlink-to-replaced-file", Upper: []imagebuild.Entry{file("y", "first", 0o644), hard("h", "y", 0o644), file("y", "second", 0o644)},
		Set: map[string]string{"y": "f 644 second", "h": "f 644 first"}},
	{Name: "hardlink-into-replaced-dir", Upper: []imagebuild.Entry{dir("x", 0o755), file("x/t", "t", 0o600), hard("h", "x/t", 0o600), file("x", "f", 0o644)},
		Del: []string{"x"}, Set: map[string]string{"x": "f 644 f", "h": "f 600 t"}},
	{Name: "hardlink-then-target-whiteout", Upper: []imagebuild.Entry{file("y", "n", 0o644), hard("h", "y", 0o644), wh("y")},
		Set: map[string]string{"y": "f 644 n", "h": "f 644 n"}, Containerd: ContainerdRefuses},
	{Name: "hardlink-replaced", Upper: []imagebuild.Entry{file("t", "t", 0o644), hard("h", "t", 0o644), file("h", "own", 0o644)},
		Set: map[string]string{"t": "f 644 t", "h": "f 644 own"}},
	{Name: "whiteout-never-existed", Upper: []imagebuild.Entry{wh("nothere"), wh("x/nothere")}},
	{Name: "opaque-dir-replaced-by-file", Upper: []imagebuild.Entry{opq("x"), file("x", "f", 0o644)},
		Del: []string{"x"}, Set: map[string]string{"x": "f 644 f"}},
}

// Layers returns the lower and upper layer entries holding every case
// under Top/<case name>/.
func Layers() (lowerL, upperL []imagebuild.Entry) { return LayersOf(Cases) }

// LayersOf is Layers for some cases only.
func LayersOf(cases []Case) (lowerL, upperL []imagebuild.Entry) {
	lowerL = []imagebuild.Entry{dir(".", 0o755), dir(Top, 0o755)}
	upperL = []imagebuild.Entry{dir(".", 0o755), dir(Top, 0o755)}
	for _, c := range cases {
		p := Top + "/" + c.Name
		lowerL = append(lowerL, dir(p, 0o755))
		upperL = append(upperL, dir(p, 0o755))
		for _, e := range lower {
			lowerL = append(lowerL, prefixed(p, e))
		}
		for _, e := range c.Upper {
			upperL = append(upperL, prefixed(p, e))
		}
	}
	return lowerL, upperL
}

func prefixed(p string, e imagebuild.Entry) imagebuild.Entry {
	e.Header.Name = p + "/" + e.Header.Name
	if e.Header.Linkname != "" && e.Header.Typeflag == '1' { // hard links name a layer path
		e.Header.Linkname = p + "/" + e.Header.Linkname
	}
	return e
}

// Want returns the expected merged view of case c, relative to its case
// directory.
func (c Case) Want() map[string]string {
	w := map[string]string{}
	for k, v := range lowerView {
		gone := false
		for _, d := range c.Del {
			if k == d || strings.HasPrefix(k, d+"/") {
				gone = true
			}
		}
		if !gone {
			w[k] = v
		}
	}
	for k, v := range c.Set {
		w[k] = v
	}
	return w
}

// List describes the tree under root, relative paths to descriptions.
func List(root string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			// Listed but not there: overlayfs shows a whiteout this way
			// when it sits in an opaque directory.
			out[rel] = "ghost"
			return nil
		}
		if err != nil {
			return err
		}
		perm := fmt.Sprintf("%o", fi.Mode().Perm())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "l " + t
		case fi.IsDir():
			out[rel] = "d " + perm
		case fi.Mode()&fs.ModeNamedPipe != 0:
			out[rel] = "p " + perm
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = "f " + perm + " " + string(b)
		default:
			out[rel] = "? " + fi.Mode().String()
		}
		return nil
	})
	return out, err
}

// ListScript prints, inside a container with busybox, the tree under dir
// in the form ParseListing reads (one "path|description" line each).
func ListScript(dir string) string {
	return `cd ` + dir + ` && find . -mindepth 1 | sort | while read -r f; do
if [ -L "$f" ]; then echo "$f|l $(readlink "$f")"
elif [ -d "$f" ]; then echo "$f|d $(stat -c %a "$f")"
elif [ -p "$f" ]; then echo "$f|p $(stat -c %a "$f")"
elif [ -f "$f" ]; then echo "$f|f $(stat -c %a "$f") $(cat "$f")"
else echo "$f|? $(stat -c %A "$f")"; fi; done`
}

// ParseListing reads ListScript's output.
func ParseListing(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		p, d, ok := strings.Cut(line, "|")
		if !ok {
			return nil, fmt.Errorf("listing line %q has no '|'", line)
		}
		out[path.Clean(p)] = d
	}
	return out, nil
}

// Sub returns the part of a listing of Top under case dir name, relative
// to it.
func Sub(all map[string]string, name string) map[string]string {
	out := map[string]string{}
	for k, v := range all {
		if r, ok := strings.CutPrefix(k, name+"/"); ok {
			out[r] = v
		}
	}
	return out
}

// Diff describes how got differs from want, or "" if they are equal.
func Diff(got, want map[string]string) string {
	var lines []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			lines = append(lines, fmt.Sprintf("  missing %s (%s)", k, v))
		} else if g != v {
			lines = append(lines, fmt.Sprintf("  %s: got %q, want %q", k, g, v))
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			lines = append(lines, fmt.Sprintf("  extra %s (%s)", k, v))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// Tar writes entries as an uncompressed layer tar.
func Tar(entries []imagebuild.Entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("entry %q: %w", h.Name, err)
		}
		if _, err := tw.Write(e.Content); err != nil {
			return nil, fmt.Errorf("entry %q: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
