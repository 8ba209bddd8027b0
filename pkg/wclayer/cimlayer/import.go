package cimlayer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/layervisor/layervisor/internal/undo"
	"github.com/layervisor/layervisor/pkg/cimfs"
	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// Layout is the content of a base layer's "layout" file.
const Layout = "vhd-with-hives\n"

// configDir holds a base layer's config hives.
const configDir = "Files/Windows/System32/config"

// hiveBases maps each config hive to its Hives/ base name and delta name
// (upper case; deltas are matched ignoring case, as hcsshim does).
var hiveBases = []struct{ config, base, delta string }{
	{"DEFAULT", "DEFAULTUSER_BASE", "DEFAULTUSER_DELTA"},
	{"SAM", "SAM_BASE", "SAM_DELTA"},
	{"SECURITY", "SECURITY_BASE", "SECURITY_DELTA"},
	{"SOFTWARE", "SOFTWARE_BASE", "SOFTWARE_DELTA"},
	{"SYSTEM", "SYSTEM_BASE", "SYSTEM_DELTA"},
}

// nullDACL is the self-relative descriptor hcsshim gives every CIM entry
// that has none: revision 1, SE_SELF_RELATIVE|SE_DACL_PRESENT, no DACL
// (everyone has access).
var nullDACL = []byte{1, 0, 4, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// Options tune Import.
type Options struct {
	// ParentCIM is the immediate parent's CIM; default CIMPath(parents[0]).
	// It must be in the same directory as the new CIM (forks share regions).
	ParentCIM string
	// UtilityVM, when set, runs for a base layer that has UtilityVM/Files,
	// after the hives step and before the CIM is committed. layerDir is the
	// layer folder being written; it returns the paths (slash, relative to
	// layerDir) it changed or created. Std files are always added to the CIM
	// from disk, so its edits to them land in the CIM; other changed paths
	// under UtilityVM/Files/ are added to the CIM too; anything else (such
	// as UtilityVM/SystemTemplate.vhdx) stays in the folder only.
	UtilityVM func(ctx context.Context, layerDir string) ([]string, error)
	// Progress, when set, is called as the tar is read.
	Progress func(Progress)
}

// Progress reports how far an import is.
type Progress struct {
	Entries int
	Bytes   int64 // tar bytes read
	Done    bool
}

// Stats say what an import or export did.
type Stats struct {
	Base     bool  `json:"base"`
	Entries  int   `json:"entries"`  // tar entries
	Files    int   `json:"files"`    // regular files
	Bytes    int64 `json:"bytes"`    // data of files and streams
	StdFiles int   `json:"stdFiles"` // files also kept in the layer folder
}

// CIMPath is where hcsshim keeps a layer folder's CIM:
// <layerDir>/../cim-layers/<name of layerDir>.cim.
func CIMPath(layerDir string) string {
	d := filepath.Clean(layerDir)
	return filepath.Join(filepath.Dir(d), "cim-layers", filepath.Base(d)+".cim")
}

// stdFile is a file kept in the layer folder and added to the CIM at the end.
type stdFile struct {
	path string // as the tar names it
	info cimfs.FileInfo
}

type link struct{ target, path string }

type importer struct {
	w        *cimfs.Writer
	dir      string // layer folder
	base     bool
	parents  []string
	std      map[string]*stdFile // upper-cased path → file
	links    []link              // hard links to std files, made at the end
	utility  bool                // the tar has UtilityVM/Files
	newest   time.Time           // the newest last-write time of the tar's entries
	st       Stats
	progress func(Progress)
	r        io.Reader // the tar
}

// Import reads a Windows layer tar from r and writes the layer folder
// layerDir and the CIM cimPath. parents are the parent layer folders, top-most
// first (hcsshim order); none for a base layer. layerDir must not exist or be
// an empty directory; cimPath must not exist. On failure nothing Import made
// is left.
func Import(ctx context.Context, r io.Reader, layerDir, cimPath string, parents []string, opts *Options) (st Stats, err error) {
	if opts == nil {
		opts = &Options{}
	}
	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	name := filepath.Base(cimPath)
	if !strings.HasSuffix(strings.ToLower(name), ".cim") || len(name) <= len(".cim") {
		return st, fmt.Errorf("CIM path %s: the name must end in .cim", cimPath)
	}
	if err := mkdirAllUndo(filepath.Dir(filepath.Clean(layerDir)), &u); err != nil {
		return st, fmt.Errorf("layer folder %s: %w", layerDir, err)
	}
	if err := makeLayerDir(layerDir, &u); err != nil {
		return st, err
	}
	cimDir := filepath.Dir(cimPath)
	if err := mkdirAllUndo(cimDir, &u); err != nil {
		return st, fmt.Errorf("CIM directory %s: %w", cimDir, err)
	}
	var parent *cimfs.Image
	if len(parents) > 0 {
		pc := opts.ParentCIM
		if pc == "" {
			pc = CIMPath(parents[0])
		}
		if parent, err = cimfs.Open(pc); err != nil {
			return st, fmt.Errorf("parent layer %s: %w", parents[0], err)
		}
		defer parent.Close()
	}
	w, err := cimfs.Create(cimDir, name, parent)
	if err != nil {
		return st, err
	}
	defer w.Close()
	im := &importer{w: w, dir: layerDir, base: len(parents) == 0, parents: parents,
		std: map[string]*stdFile{}, progress: opts.Progress, r: r}
	im.st.Base = im.base
	if err := im.readTar(ctx); err != nil {
		return st, err
	}
	if im.base {
		err = im.baseHives()
	} else {
		err = im.mergeHives()
	}
	if err != nil {
		return st, err
	}
	if im.base && im.utility && opts.UtilityVM != nil {
		changed, err := opts.UtilityVM(ctx, layerDir)
		if err != nil {
			return st, fmt.Errorf("utility VM step for %s: %w", layerDir, err)
		}
		if err := im.addChanged(changed); err != nil {
			return st, err
		}
	}
	if err := im.addStdFiles(); err != nil {
		return st, err
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if err := w.Commit(); err != nil {
		return st, err
	}
	u.Commit()
	slog.Debug("imported CIM layer", "layer", layerDir, "cim", cimPath, "entries", im.st.Entries, "bytes", im.st.Bytes)
	return im.st, nil
}

// makeLayerDir creates layerDir (or accepts an empty one) and registers
// its removal (or emptying).
func makeLayerDir(dir string, u *undo.Stack) error {
	err := os.Mkdir(dir, 0o755)
	if err == nil {
		u.Push("remove layer folder "+dir, func(context.Context) error { return os.RemoveAll(dir) })
		return nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("layer folder %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("layer folder %s: %w", dir, err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("layer folder %s: exists and is not empty", dir)
	}
	u.Push("empty layer folder "+dir, func(context.Context) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		var errs []error
		for _, e := range ents {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
		return errors.Join(errs...)
	})
	return nil
}

// mkdirAllUndo creates dir and its missing parents; the undo removes the
// ones it created, if they are empty by then.
func mkdirAllUndo(dir string, u *undo.Stack) error {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	u.Push("remove created directories", func(context.Context) error {
		for _, d := range missing { // deepest first
			os.Remove(d) // a directory someone else filled stays
		}
		return nil
	})
	return nil
}

func (im *importer) readTar(ctx context.Context) error {
	tr := newReadAhead(im.r)
	defer tr.close()
	var last int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		im.st.Entries++
		if err := im.entry(e, tr); err != nil {
			var ee *wintar.EntryError
			if errors.As(err, &ee) {
				return err // the reader's, naming the entry already
			}
			return &wintar.EntryError{Entry: e.Name(), Err: err}
		}
		if n := tr.read.Load(); im.progress != nil && n-last >= 8<<20 {
			last = n
			im.progress(Progress{Entries: im.st.Entries, Bytes: n})
		}
	}
	if im.progress != nil {
		im.progress(Progress{Entries: im.st.Entries, Bytes: tr.read.Load(), Done: true})
	}
	return nil
}

// isStd reports whether p is kept in the layer folder as a file.
func isStd(p string) bool {
	u := strings.ToUpper(p)
	if strings.HasPrefix(u, "HIVES/") {
		return true
	}
	for _, prefix := range []string{"", "UTILITYVM/"} {
		if rest, ok := strings.CutPrefix(u, prefix+"FILES/WINDOWS/SYSTEM32/CONFIG/"); ok {
			switch rest {
			case "SYSTEM", "SOFTWARE":
				return true
			case "SAM", "SECURITY", "DEFAULT":
				return prefix == ""
			}
		}
	}
	return u == "UTILITYVM/FILES/EFI/MICROSOFT/BOOT/BCD" || u == "UTILITYVM/FILES/EFI/MICROSOFT/BOOT/BOOTMGFW.EFI"
}

// isGenerated reports whether p is a file Import makes (Hives/<X>_BASE).
func isGenerated(p string) bool {
	rest, ok := strings.CutPrefix(strings.ToUpper(p), "HIVES/")
	if !ok {
		return false
	}
	for _, h := range hiveBases {
		if rest == h.base {
			return true
		}
	}
	return false
}

func infoOf(e *wintar.Entry) cimfs.FileInfo {
	info := cimfs.FileInfo{
		Attributes:         e.Attributes,
		CreationTime:       e.CreationTime,
		LastWriteTime:      e.LastWriteTime,
		ChangeTime:         e.ChangeTime,
		LastAccessTime:     e.LastAccessTime,
		SecurityDescriptor: e.SecurityDescriptor,
	}
	if info.SecurityDescriptor == nil {
		info.SecurityDescriptor = nullDACL
	}
	if len(e.EAs) > 0 {
		info.EAs, _ = wintar.EncodeEAs(e.EAs) // the reader checked them
	}
	// Only links are reparse points here (hcsshim clears the bit otherwise).
	info.Attributes &^= cimfs.AttrReparsePoint
	if e.Kind == wintar.KindSymlink || e.Kind == wintar.KindJunction {
		info.Attributes |= cimfs.AttrReparsePoint
		info.ReparseData = e.Reparse
	}
	return info
}

func (im *importer) entry(e *wintar.Entry, data io.Reader) error {
	if hasPrefixFold(e.Path, "UtilityVM/Files") {
		im.utility = true
	}
	if e.Kind != wintar.KindWhiteout && e.LastWriteTime.After(im.newest) {
		im.newest = e.LastWriteTime
	}
	key := strings.ToUpper(e.Path)
	if im.base && hasPrefixFold(e.Path, "Hives") {
		return errors.New("a base layer cannot carry Hives/: its hive bases are made from its config hives")
	}
	if isGenerated(e.Path) {
		return errors.New("a layer cannot carry a hive base: it is made from the deltas on import")
	}
	switch e.Kind {
	case wintar.KindWhiteout:
		if im.base {
			return errors.New("a base layer cannot delete files (whiteout)")
		}
		err := im.w.Remove(e.Path)
		if errors.Is(err, fs.ErrNotExist) {
			slog.Debug("whiteout of a missing path", "path", e.Path)
			return nil
		}
		return err
	case wintar.KindHardlink:
		if isStd(e.Path) {
			return errors.New("a hive or boot file cannot be a hard link")
		}
		if im.std[strings.ToUpper(e.Target)] != nil {
			im.links = append(im.links, link{e.Target, e.Path})
			return nil
		}
		return im.w.AddLink(e.Target, e.Path)
	case wintar.KindStream:
		im.st.Bytes += e.Size
		if isStd(e.Path) {
			return errors.New("a hive or boot file cannot have alternate data streams")
		}
		return im.w.AddAlternateStream(e.Path, e.Stream, data)
	case wintar.KindFile:
		im.st.Files++
		im.st.Bytes += e.Size
		if isStd(e.Path) {
			return im.writeStd(e, data)
		}
		return im.w.Add(e.Path, infoOf(e), data)
	default: // directories, symlinks, junctions
		if isStd(e.Path) {
			return fmt.Errorf("a hive or boot file path cannot be a %s", e.Kind)
		}
		if im.std[key] != nil {
			return errors.New("replaces a hive or boot file")
		}
		return im.w.Add(e.Path, infoOf(e), nil)
	}
}

// writeStd writes a std file into the layer folder; it goes into the CIM at
// the end, after the steps that may rewrite it.
func (im *importer) writeStd(e *wintar.Entry, data io.Reader) error {
	p := filepath.Join(im.dir, filepath.FromSlash(e.Path))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if !e.LastWriteTime.IsZero() {
		os.Chtimes(p, e.LastAccessTime, e.LastWriteTime)
	}
	im.std[strings.ToUpper(e.Path)] = &stdFile{path: e.Path, info: infoOf(e)}
	im.st.StdFiles++
	return nil
}

// generated is the metadata of an entry this package makes (the Hives
// directory, layout, merged hive bases). hcsshim's CIM writer gives them
// zero times, which read as 1601 on Windows (year 1 here); they get the
// layer's time instead, as the files beside them have theirs: the newest
// last-write time of the layer's entries. Taken from the tar, it is the same
// when an export of the layer is imported again (export leaves these out).
func (im *importer) generated(attrs uint32) cimfs.FileInfo {
	t := im.newest
	return cimfs.FileInfo{Attributes: attrs, SecurityDescriptor: nullDACL,
		CreationTime: t, LastWriteTime: t, ChangeTime: t, LastAccessTime: t}
}

// baseHives links Hives/<NAME>_BASE to each config hive and writes layout.
func (im *importer) baseHives() error {
	hives := filepath.Join(im.dir, "Hives")
	if err := os.Mkdir(hives, 0o755); err != nil {
		return err
	}
	if err := im.w.Add("Hives", im.generated(cimfs.AttrDirectory), nil); err != nil {
		return err
	}
	for _, h := range hiveBases {
		cfg := im.std[strings.ToUpper(configDir+"/"+h.config)]
		if cfg == nil {
			return fmt.Errorf("base layer has no %s/%s hive", configDir, h.config)
		}
		if err := os.Link(filepath.Join(im.dir, filepath.FromSlash(cfg.path)), filepath.Join(hives, h.base)); err != nil {
			return err
		}
		im.links = append(im.links, link{cfg.path, "Hives/" + h.base})
	}
	if err := os.WriteFile(filepath.Join(im.dir, "layout"), []byte(Layout), 0o644); err != nil {
		return err
	}
	return im.w.Add("layout", im.generated(cimfs.AttrNormal), strings.NewReader(Layout))
}

// mergeHives makes Hives/<X>_BASE for each delta this layer carries.
func (im *importer) mergeHives() error {
	for _, h := range hiveBases {
		delta := im.std["HIVES/"+h.delta]
		if delta == nil {
			continue
		}
		basePath, err := im.ancestorBase(h.base)
		if err != nil {
			return &wintar.EntryError{Entry: delta.path, Err: err}
		}
		base, err := regf.ReadFile(basePath)
		if err != nil {
			return fmt.Errorf("hive base %s: %w", basePath, err)
		}
		d, err := regf.ReadFile(filepath.Join(im.dir, filepath.FromSlash(delta.path)))
		if err != nil {
			return &wintar.EntryError{Entry: delta.path, Err: err}
		}
		merged, err := regf.Merge(base, d)
		if err != nil {
			return fmt.Errorf("merge %s into %s: %w", delta.path, basePath, err)
		}
		raw, err := merged.Marshal()
		if err != nil {
			return fmt.Errorf("write merged %s: %w", h.base, err)
		}
		if err := os.WriteFile(filepath.Join(im.dir, "Hives", h.base), raw, 0o644); err != nil {
			return err
		}
		if err := im.w.Add("Hives/"+h.base, im.generated(cimfs.AttrNormal), bytes.NewReader(raw)); err != nil {
			return err
		}
	}
	return nil
}

// ancestorBase finds Hives/<name> in the nearest parent folder that has it.
func (im *importer) ancestorBase(name string) (string, error) {
	for _, p := range im.parents {
		ents, err := os.ReadDir(filepath.Join(p, "Hives"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		for _, e := range ents {
			if strings.EqualFold(e.Name(), name) {
				return filepath.Join(p, "Hives", e.Name()), nil
			}
		}
	}
	return "", fmt.Errorf("delta hive without a base: no parent layer has Hives/%s", name)
}

// addChanged adds files the utility VM step made under UtilityVM/Files/ that
// are not std files (those are added from disk anyway).
func (im *importer) addChanged(changed []string) error {
	for _, p := range changed {
		if im.std[strings.ToUpper(p)] != nil || !hasPrefixFold(p, "UtilityVM/Files/") {
			continue
		}
		f, err := os.Open(filepath.Join(im.dir, filepath.FromSlash(p)))
		if err != nil {
			return fmt.Errorf("utility VM step output %s: %w", p, err)
		}
		err = im.w.Add(p, im.generated(cimfs.AttrNormal), f)
		f.Close()
		if err != nil {
			return fmt.Errorf("utility VM step output %s: %w", p, err)
		}
	}
	return nil
}

// addStdFiles adds the std files from disk, then the links that name them.
func (im *importer) addStdFiles() error {
	keys := make([]string, 0, len(im.std))
	for k := range im.std {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		sf := im.std[k]
		f, err := os.Open(filepath.Join(im.dir, filepath.FromSlash(sf.path)))
		if err != nil {
			return err
		}
		err = im.w.Add(sf.path, sf.info, f)
		f.Close()
		if err != nil {
			return &wintar.EntryError{Entry: sf.path, Err: err}
		}
	}
	for _, l := range im.links {
		if err := im.w.AddLink(l.target, l.path); err != nil {
			return &wintar.EntryError{Entry: l.path, Err: err}
		}
	}
	return nil
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) &&
		(len(s) == len(prefix) || s[len(prefix)] == '/' || strings.HasSuffix(prefix, "/"))
}

// RemoveCIM deletes a committed CIM: the .cim file and its own region and
// objectid files (its parents' stay). A missing CIM is not an error.
func RemoveCIM(cimPath string) error {
	img, err := cimfs.Open(cimPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	own := img.Own
	img.Close()
	dir := filepath.Dir(cimPath)
	var errs []error
	for i := range own.Count {
		for _, kind := range []string{"region", "objectid"} {
			err := os.Remove(filepath.Join(dir, fmt.Sprintf("%s_%s_%d", kind, own.ID, i)))
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(append(errs, os.Remove(cimPath))...)
}
