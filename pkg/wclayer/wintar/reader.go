package wintar

import (
	"archive/tar"
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// Reader reads a Windows layer tar entry by entry, validating each.
// The first error is sticky: every later call returns it.
type Reader struct {
	src     *countingReader
	tr      *tar.Reader
	chk     *checker
	cur     *Entry
	curName string
	dataEnd int64 // source offset where the last entry's data (padded) ends
	err     error
}

// NewReader reads a layer tar (uncompressed) from r. It reads r through a
// buffer, so it may read past the end of the archive.
func NewReader(r io.Reader) *Reader {
	// The counter sits above the buffer: it counts what tar consumed.
	src := &countingReader{r: bufio.NewReaderSize(r, 64<<10)}
	return &Reader{src: src, tr: tar.NewReader(src), chk: newChecker()}
}

// Next returns the next entry; io.EOF after the last. An archive that ends
// without its end-of-archive marker (two zero blocks) is truncated and gives
// an error naming the last entry read.
func (r *Reader) Next() (*Entry, error) {
	if r.err != nil {
		return nil, r.err
	}
	h, err := r.tr.Next()
	if err == io.EOF && r.src.n >= r.dataEnd+2*512 {
		r.err = io.EOF
		return nil, io.EOF
	}
	if err != nil {
		switch err {
		case io.EOF:
			err = errors.New("archive ends without its end-of-archive marker (truncated)")
		case io.ErrUnexpectedEOF:
			err = fmt.Errorf("archive truncated: %w", err)
		}
		name := r.curName
		if name == "" {
			name = "(first entry)"
		}
		return nil, r.fail(name, err)
	}
	r.curName = h.Name
	r.dataEnd = r.src.n
	if h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeRegA { // header-only types have no data blocks
		r.dataEnd += (h.Size + 511) &^ 511
	}
	e, err := fromHeader(h)
	if err == nil {
		err = r.chk.check(e)
	}
	if err != nil {
		return nil, r.fail(h.Name, err)
	}
	if e.Kind == KindSymlink || e.Kind == KindJunction {
		e.Reparse = EncodeReparse(e.Target, e.Kind == KindJunction)
	}
	r.cur = e
	return e, nil
}

// Read reads the data of the current file or stream entry.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.cur == nil || (r.cur.Kind != KindFile && r.cur.Kind != KindStream) {
		return 0, io.EOF
	}
	n, err := r.tr.Read(p)
	if err != nil && err != io.EOF {
		if err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("archive truncated in the entry's data: %w", err)
		}
		return n, r.fail(r.curName, err)
	}
	return n, err
}

func (r *Reader) fail(name string, err error) error {
	r.err = &EntryError{Entry: name, Err: err}
	return r.err
}

// fromHeader turns a tar header into an entry, decoding the Windows PAX
// records; it checks the records' syntax, checker.check the rest.
func fromHeader(h *tar.Header) (*Entry, error) {
	name := strings.TrimSuffix(h.Name, "/")
	e := &Entry{Path: name}
	keys := make([]string, 0, len(h.PAXRecords))
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			// Go expands sparse entries into their holes; Windows tars have none.
			return nil, fmt.Errorf("PAX record %s: sparse entries have no meaning in a Windows layer", k)
		}
		if strings.HasPrefix(k, "MSWINDOWS.") || k == paxCreationTime {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)

	dir, base := splitDir(name)
	path, stream, isStream, err := splitStream(name)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.HasPrefix(base, whiteoutPrefix):
		if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA || h.Size != 0 {
			return nil, errors.New("a whiteout must be an empty regular entry")
		}
		if len(keys) > 0 {
			return nil, fmt.Errorf("a whiteout carries no %s", keys[0])
		}
		e.Kind = KindWhiteout
		e.Path = strings.TrimPrefix(base, whiteoutPrefix)
		if dir != "" {
			e.Path = dir + "/" + e.Path
		}
		return e, nil
	case isStream:
		if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA {
			return nil, fmt.Errorf("an alternate data stream must be a regular entry, not type %q", h.Typeflag)
		}
		if len(keys) > 0 {
			return nil, fmt.Errorf("an alternate data stream carries no %s", keys[0])
		}
		e.Kind, e.Path, e.Stream, e.Size = KindStream, path, stream, h.Size
		setTimes(e, h)
		return e, nil
	}

	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA:
		e.Kind, e.Size = KindFile, h.Size
	case tar.TypeDir:
		e.Kind = KindDir
		e.Attributes = AttrDirectory
	case tar.TypeSymlink:
		e.Kind, e.Target = KindSymlink, h.Linkname
	case tar.TypeLink:
		e.Kind, e.Target = KindHardlink, strings.TrimSuffix(h.Linkname, "/")
	default:
		return nil, fmt.Errorf("tar entry type %q has no meaning in a Windows layer", h.Typeflag)
	}
	setTimes(e, h)
	e.CreationTime = e.LastWriteTime
	for _, k := range keys {
		v := h.PAXRecords[k]
		if err := applyPAX(e, k, v, h.PAXRecords); err != nil {
			return nil, fmt.Errorf("PAX record %s=%q: %w", k, clip(v), err)
		}
	}
	return e, nil
}

func setTimes(e *Entry, h *tar.Header) {
	e.LastWriteTime = h.ModTime.UTC()
	if !h.AccessTime.IsZero() {
		e.LastAccessTime = h.AccessTime.UTC()
	}
	if !h.ChangeTime.IsZero() {
		e.ChangeTime = h.ChangeTime.UTC()
	}
}

func applyPAX(e *Entry, k, v string, all map[string]string) error {
	switch {
	case k == paxFileAttr:
		a, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return errors.New("not a decimal 32-bit number")
		}
		e.Attributes = uint32(a)
	case k == paxRawSD:
		sd, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return fmt.Errorf("not base64: %w", err)
		}
		if err := CheckSecurityDescriptor(sd); err != nil {
			return err
		}
		e.SecurityDescriptor = sd
	case k == paxSDDL:
		if _, ok := all[paxRawSD]; ok {
			return errBothSD
		}
		sd, err := SDDLToSecurityDescriptor(v)
		if err != nil {
			return err
		}
		e.SecurityDescriptor = sd
	case k == paxMountPoint:
		if e.Kind != KindSymlink {
			return fmt.Errorf("only a symlink entry can be a junction, this is a %s", e.Kind)
		}
		if v != "1" {
			return errors.New(`want "1"`)
		}
		e.Kind = KindJunction
	case strings.HasPrefix(k, paxXattrPrefix):
		val, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return fmt.Errorf("not base64: %w", err)
		}
		ea := EA{Name: k[len(paxXattrPrefix):], Value: val}
		if err := checkEA(ea); err != nil {
			return err
		}
		e.EAs = append(e.EAs, ea) // keys are sorted, so EAs are too
	case k == paxCreationTime:
		t, err := parsePAXTime(v)
		if err != nil {
			return err
		}
		e.CreationTime = t
	default:
		return errors.New("unknown MSWINDOWS key")
	}
	return nil
}

// clip shortens a value quoted in an error.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// countingReader counts the bytes the tar reader consumed, to tell a
// complete archive from one cut at an entry boundary.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
