package cimlayer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/layervisor/layervisor/pkg/cimfs"
	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// Export writes the layer tar of the CIM at cimPath to w. With parentCIM
// (the CIM it was forked from) only what differs from the parent is written:
// new and changed entries, and whiteouts for names the layer deleted.
// Files Import generates (layout, Hives/*_BASE) are left out.
func Export(ctx context.Context, w io.Writer, cimPath, parentCIM string) (st Stats, err error) {
	img, err := cimfs.Open(cimPath)
	if err != nil {
		return st, err
	}
	defer img.Close()
	ex := &exporter{tw: wintar.NewWriter(w), img: img, first: map[uint32]string{}, emitted: map[string]bool{}}
	if parentCIM != "" {
		if ex.parent, err = cimfs.Open(parentCIM); err != nil {
			return st, fmt.Errorf("parent CIM of %s: %w", cimPath, err)
		}
		defer ex.parent.Close()
		if err := ex.whiteouts(ctx); err != nil {
			return st, fmt.Errorf("export %s: %w", cimPath, err)
		}
		if err := ex.deltas(); err != nil {
			return st, fmt.Errorf("export %s: %w", cimPath, err)
		}
	}
	ex.st.Base = ex.parent == nil
	err = img.Walk(func(p string, f *cimfs.File) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == "" || ex.skip(p) {
			return nil
		}
		if err := ex.file(p, f); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		return nil
	})
	if err == nil {
		err = ex.tw.Close()
	}
	if err != nil {
		return st, fmt.Errorf("export %s: %w", cimPath, err)
	}
	return ex.st, nil
}

type exporter struct {
	tw      *wintar.Writer
	img     *cimfs.Image
	parent  *cimfs.Image
	first   map[uint32]string // FileID → first name seen in img
	plinks  map[string]string // upper name in the parent → first name of its file, for its later names
	emitted map[string]bool   // upper names written
	force   map[string]bool   // upper names written even if the parent has them the same
	st      Stats
}

// skip leaves out what Import generates.
func (ex *exporter) skip(p string) bool {
	return strings.EqualFold(p, "layout") || isGenerated(p) || (ex.parent == nil && hasPrefixFold(p, "Hives"))
}

// whiteouts writes a whiteout for each top-most name of the parent the
// layer no longer has (or has as another kind), and notes the parent's
// hard links.
func (ex *exporter) whiteouts(ctx context.Context) error {
	gone := map[string]bool{}
	pfirst := map[uint32]string{}
	ex.plinks = map[string]string{}
	return ex.parent.Walk(func(p string, pf *cimfs.File) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == "" || ex.skip(p) {
			return nil
		}
		up := strings.ToUpper(p)
		if !pf.IsDir() {
			if t, ok := pfirst[pf.ID]; ok {
				ex.plinks[up] = t
			} else {
				pfirst[pf.ID] = p
			}
		}
		for i := range len(up) {
			if up[i] == '/' && gone[up[:i]] {
				return nil
			}
		}
		cf, err := ex.img.Stat(p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err == nil && cf.IsDir() == pf.IsDir() && (cf.ReparseTag != 0) == (pf.ReparseTag != 0) {
			return nil
		}
		gone[up] = true
		return ex.write(&wintar.Entry{Path: p, Kind: wintar.KindWhiteout}, nil)
	})
}

// deltas marks the delta hives this layer carried: its hive base differs
// from the parent's. A delta equal to the parent's must still be written, as
// importing it merges it again.
func (ex *exporter) deltas() error {
	ex.force = map[string]bool{}
	for _, h := range hiveBases {
		f, err := ex.img.Stat("Hives/" + h.base)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		changed := true
		if pf, err := ex.parent.Stat("Hives/" + h.base); err == nil {
			a, err := f.Open()
			if err != nil {
				return err
			}
			b, err := pf.Open()
			if err != nil {
				return err
			}
			same, err := sameContent(a, b)
			if err != nil {
				return err
			}
			changed = !same
		}
		if changed {
			ex.force["HIVES/"+h.delta] = true
		}
	}
	return nil
}

func (ex *exporter) write(e *wintar.Entry, data io.Reader) error {
	if err := ex.tw.WriteEntry(e, data); err != nil {
		return err
	}
	ex.st.Entries++
	if e.Kind == wintar.KindFile {
		ex.st.Files++
		if isStd(e.Path) {
			ex.st.StdFiles++
		}
	}
	ex.st.Bytes += e.Size
	if e.Kind != wintar.KindWhiteout {
		ex.emitted[strings.ToUpper(e.Path)] = true
	}
	return nil
}

func (ex *exporter) file(p string, f *cimfs.File) error {
	if !f.IsDir() {
		if target, ok := ex.first[f.ID]; ok {
			return ex.hardlink(p, target, f)
		}
		ex.first[f.ID] = p
	}
	if ex.parent != nil && !ex.force[strings.ToUpper(p)] {
		same, err := ex.unchanged(p, f)
		if err != nil || same {
			return err
		}
	}
	info, err := f.Info()
	if err != nil {
		return err
	}
	e := &wintar.Entry{Path: p, Attributes: info.Attributes, CreationTime: info.CreationTime,
		LastWriteTime: info.LastWriteTime, ChangeTime: info.ChangeTime, LastAccessTime: info.LastAccessTime,
		SecurityDescriptor: info.SecurityDescriptor}
	if bytes.Equal(e.SecurityDescriptor, nullDACL) {
		e.SecurityDescriptor = nil // Import's default
	}
	if len(info.EAs) > 0 {
		if e.EAs, err = wintar.DecodeEAs(info.EAs); err != nil {
			return err
		}
	}
	var data io.Reader
	switch {
	case len(info.ReparseData) > 0:
		target, junction, err := wintar.DecodeReparse(info.ReparseData)
		if err != nil {
			return err
		}
		e.Kind, e.Target = wintar.KindSymlink, target
		if junction {
			e.Kind = wintar.KindJunction
		}
	case f.IsDir():
		e.Kind = wintar.KindDir
	default:
		e.Kind, e.Size = wintar.KindFile, f.Size
		if data, err = f.Open(); err != nil {
			return err
		}
	}
	if err := ex.write(e, data); err != nil {
		return err
	}
	if e.Kind != wintar.KindFile && e.Kind != wintar.KindDir {
		return nil
	}
	ss, err := f.Streams()
	if err != nil {
		return err
	}
	for _, s := range ss {
		r, err := f.OpenStream(s.Name)
		if err != nil {
			return err
		}
		if err := ex.write(&wintar.Entry{Path: p, Kind: wintar.KindStream, Stream: s.Name, Size: s.Size}, r); err != nil {
			return err
		}
	}
	return nil
}

// hardlink writes p as another name of target unless the parent had the
// same link and target is unchanged.
func (ex *exporter) hardlink(p, target string, f *cimfs.File) error {
	if ex.parent != nil && !ex.emitted[strings.ToUpper(target)] &&
		strings.EqualFold(ex.plinks[strings.ToUpper(p)], target) {
		return nil
	}
	return ex.write(&wintar.Entry{Path: p, Kind: wintar.KindHardlink, Target: target,
		Attributes: f.Attributes &^ (cimfs.AttrDirectory | cimfs.AttrReparsePoint)}, nil)
}

// unchanged reports whether the parent has p with the same metadata,
// content and streams.
func (ex *exporter) unchanged(p string, f *cimfs.File) (bool, error) {
	pf, err := ex.parent.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil || pf.IsDir() != f.IsDir() || pf.Size != f.Size || pf.Attributes != f.Attributes {
		return false, err
	}
	if _, wasLink := ex.plinks[strings.ToUpper(p)]; wasLink {
		return false, nil // now a name of its own
	}
	a, err := f.Info()
	if err != nil {
		return false, err
	}
	b, err := pf.Info()
	if err != nil {
		return false, err
	}
	if !a.CreationTime.Equal(b.CreationTime) || !a.LastWriteTime.Equal(b.LastWriteTime) ||
		!a.ChangeTime.Equal(b.ChangeTime) || !a.LastAccessTime.Equal(b.LastAccessTime) ||
		!bytes.Equal(a.SecurityDescriptor, b.SecurityDescriptor) || !bytes.Equal(a.EAs, b.EAs) ||
		!bytes.Equal(a.ReparseData, b.ReparseData) {
		return false, nil
	}
	if f.IsDir() {
		return true, nil
	}
	ra, err := f.Open()
	if err != nil {
		return false, err
	}
	rb, err := pf.Open()
	if err != nil {
		return false, err
	}
	if same, err := sameContent(ra, rb); err != nil || !same {
		return false, err
	}
	sa, err := f.Streams()
	if err != nil {
		return false, err
	}
	sb, err := pf.Streams()
	if err != nil || len(sa) != len(sb) {
		return false, err
	}
	for i := range sa {
		if sa[i].Name != sb[i].Name || sa[i].Size != sb[i].Size {
			return false, nil
		}
		ra, err := f.OpenStream(sa[i].Name)
		if err != nil {
			return false, err
		}
		rb, err := pf.OpenStream(sb[i].Name)
		if err != nil {
			return false, err
		}
		if same, err := sameContent(ra, rb); err != nil || !same {
			return false, err
		}
	}
	return true, nil
}

func sameContent(a, b *io.SectionReader) (bool, error) {
	if a.Size() != b.Size() {
		return false, nil
	}
	ba, bb := make([]byte, 64<<10), make([]byte, 64<<10)
	for off := int64(0); off < a.Size(); off += int64(len(ba)) {
		n := min(int64(len(ba)), a.Size()-off)
		if _, err := a.ReadAt(ba[:n], off); err != nil && err != io.EOF {
			return false, err
		}
		if _, err := b.ReadAt(bb[:n], off); err != nil && err != io.EOF {
			return false, err
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			return false, nil
		}
	}
	return true, nil
}
