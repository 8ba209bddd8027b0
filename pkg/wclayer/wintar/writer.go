package wintar

import (
	"archive/tar"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Writer writes a Windows layer tar in the format Reader reads (go-winio's
// backuptar conventions): PAX headers, streams as "file:stream" entries
// after their file, whiteouts as empty ".wh." entries. Its output depends
// only on the entries. The first error is sticky.
type Writer struct {
	tw  *tar.Writer
	chk *checker
	buf []byte // copy buffer, reused across entries
	err error
}

// NewWriter writes a layer tar to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{tw: tar.NewWriter(w), chk: newChecker()}
}

// Unix mode bits go-winio puts in the tar mode field.
const (
	modeDir     = 0o40000
	modeRegular = 0o100000
	modeSymlink = 0o120000
)

// WriteEntry writes e; for a file or stream, exactly e.Size bytes of data
// follow from data. Entries are checked as the Reader checks them (so
// parents come first and streams follow their file).
func (w *Writer) WriteEntry(e *Entry, data io.Reader) error {
	if w.err != nil {
		return w.err
	}
	if err := w.chk.check(e); err != nil {
		return w.fail(e.Name(), err)
	}
	h := &tar.Header{Name: e.Name(), Format: tar.FormatPAX}
	switch e.Kind {
	case KindWhiteout:
		h.Typeflag, h.ModTime = tar.TypeReg, time.Unix(0, 0)
		return w.write(e, h, nil)
	case KindStream:
		h.Typeflag, h.Mode, h.Size = tar.TypeReg, modeRegular, e.Size
		setHeaderTimes(h, e)
		return w.write(e, h, data)
	case KindFile:
		h.Typeflag, h.Mode, h.Size = tar.TypeReg, modeRegular, e.Size
	case KindDir:
		h.Typeflag, h.Mode = tar.TypeDir, modeDir
	case KindSymlink, KindJunction:
		h.Typeflag, h.Mode, h.Linkname = tar.TypeSymlink, modeSymlink, e.Target
	case KindHardlink:
		h.Typeflag, h.Mode, h.Linkname = tar.TypeLink, 0o644, e.Target
	}
	setHeaderTimes(h, e)
	h.PAXRecords = map[string]string{
		paxFileAttr:     strconv.FormatUint(uint64(e.Attributes), 10),
		paxCreationTime: formatPAXTime(e.CreationTime),
	}
	if e.SecurityDescriptor != nil {
		h.PAXRecords[paxRawSD] = base64.StdEncoding.EncodeToString(e.SecurityDescriptor)
	}
	if e.Kind == KindJunction {
		h.PAXRecords[paxMountPoint] = "1"
	}
	for _, ea := range e.EAs {
		h.PAXRecords[paxXattrPrefix+ea.Name] = base64.StdEncoding.EncodeToString(ea.Value)
	}
	if e.Kind == KindFile {
		return w.write(e, h, data)
	}
	return w.write(e, h, nil)
}

func setHeaderTimes(h *tar.Header, e *Entry) {
	h.ModTime, h.AccessTime, h.ChangeTime = e.LastWriteTime, e.LastAccessTime, e.ChangeTime
}

func (w *Writer) write(e *Entry, h *tar.Header, data io.Reader) error {
	if err := w.tw.WriteHeader(h); err != nil {
		return w.fail(e.Name(), err)
	}
	if h.Size == 0 {
		return nil
	}
	if data == nil {
		return w.fail(e.Name(), errors.New("no data reader for a non-empty entry"))
	}
	if w.buf == nil {
		w.buf = make([]byte, 64<<10)
	}
	n, err := io.CopyBuffer(w.tw, io.LimitReader(data, h.Size), w.buf)
	if err == nil && n < h.Size {
		err = fmt.Errorf("data ended after %d of %d bytes", n, h.Size)
	}
	if err != nil {
		return w.fail(e.Name(), err)
	}
	return nil
}

// Close writes the end-of-archive marker (it does not close the underlying
// writer).
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if err := w.tw.Close(); err != nil {
		w.err = fmt.Errorf("closing layer tar: %w", err)
		return w.err
	}
	w.err = errors.New("layer tar writer closed")
	return nil
}

func (w *Writer) fail(name string, err error) error {
	w.err = &EntryError{Entry: name, Err: err}
	return w.err
}
