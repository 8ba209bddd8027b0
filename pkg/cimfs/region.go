package cimfs

import (
	"bytes"
	"cmp"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
)

// objKey identifies a stored object the way objectid files do: its length
// and a 24-byte digest (the bytes themselves when they fit, else the first
// 24 bytes of their SHA-512 — measured on the real image).
type objKey struct {
	length int64
	digest [24]byte
}

func keyOf(b []byte) objKey {
	k := objKey{length: int64(len(b))}
	if len(b) <= len(k.digest) {
		copy(k.digest[:], b)
	} else {
		s := sha512.Sum512(b)
		copy(k.digest[:], s[:])
	}
	return k
}

// objects is a region's object index: it dedups objects and becomes the
// region's objectid file.
type objects struct {
	offs  map[objKey]int64
	order []objKey
}

func (o *objects) find(k objKey) (int64, bool) {
	off, ok := o.offs[k]
	return off, ok
}

func (o *objects) add(k objKey, off int64) {
	if o.offs == nil {
		o.offs = map[objKey]int64{}
	}
	o.offs[k] = off
	o.order = append(o.order, k)
}

// objectIDFile renders the objectid file for region n of the given type:
// entries sorted by length, then digest, as cimfs.dll writes them.
func (o *objects) objectIDFile(n int, typ uint8) []byte {
	keys := slices.Clone(o.order)
	slices.SortFunc(keys, func(a, b objKey) int {
		if c := cmp.Compare(a.length, b.length); c != 0 {
			return c
		}
		return bytes.Compare(a.digest[:], b.digest[:])
	})
	b := make([]byte, objectIDHeaderLen+objectIDEntryLen*len(keys))
	putCommonHeader(b, objectIDHeaderLen, hdrTypeObjectID)
	le := binary.LittleEndian
	le.PutUint16(b[0x20:], uint16(n))
	b[0x22] = typ
	le.PutUint32(b[0x28:], objectIDHeaderLen)
	le.PutUint32(b[0x2c:], uint32(len(keys)))
	for i, k := range keys {
		e := b[objectIDHeaderLen+objectIDEntryLen*i:]
		le.PutUint64(e, uint64(k.length))
		copy(e[8:], k.digest[:])
		le.PutUint64(e[0x20:], uint64(o.offs[k]))
	}
	return b
}

func regionHeader(typ uint8) []byte {
	b := make([]byte, regionHeaderLen)
	putCommonHeader(b, regionHeaderLen, hdrTypeRegion)
	// The Index field (0x20) is 0 in every region file of the real image.
	b[0x22] = typ
	return b
}

// dataRegion is a region file that file content is streamed into as it is
// added: a temp file, renamed into place at Commit.
type dataRegion struct {
	n     int // index within the image's own region set
	typ   uint8
	f     *os.File
	size  int64
	objs  objects
	final string
}

func newDataRegion(dir string, n int, typ uint8, final string) (*dataRegion, error) {
	f, err := os.CreateTemp(dir, ".cimfs-region-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("create region file in %s: %w", dir, err)
	}
	r := &dataRegion{n: n, typ: typ, f: f, final: final}
	if _, err := f.Write(regionHeader(typ)); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("write %s: %w", f.Name(), err)
	}
	r.size = regionHeaderLen
	return r, nil
}

// putSmall stores b (already in memory) 8-byte aligned, once.
func (r *dataRegion) putSmall(b []byte) (int64, error) {
	k := keyOf(b)
	if off, ok := r.objs.find(k); ok {
		return off, nil
	}
	off := r.size
	padded := make([]byte, align(int64(len(b)), 8))
	copy(padded, b)
	if _, err := r.f.WriteAt(padded, off); err != nil {
		r.f.Truncate(off)
		return 0, fmt.Errorf("write %s: %w", r.f.Name(), err)
	}
	r.size += int64(len(padded))
	r.objs.add(k, off)
	return off, nil
}

// putLarge streams first and then the rest of src to a page-aligned
// offset through buf, hashing as it goes; a duplicate of earlier content is
// cut off again and the earlier copy used.
func (r *dataRegion) putLarge(first []byte, src io.Reader, buf []byte) (off, n int64, err error) {
	start := align(r.size, pageSize)
	h := sha512.New()
	write := func(b []byte) error {
		h.Write(b)
		if _, err := r.f.WriteAt(b, start+n); err != nil {
			return fmt.Errorf("write %s: %w", r.f.Name(), err)
		}
		n += int64(len(b))
		return nil
	}
	defer func() {
		if err != nil {
			r.f.Truncate(r.size)
		}
	}()
	if err := write(first); err != nil {
		return 0, 0, err
	}
	for {
		m, rerr := src.Read(buf)
		if m > 0 {
			if err := write(buf[:m]); err != nil {
				return 0, 0, err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return 0, 0, fmt.Errorf("read file data: %w", rerr)
		}
	}
	k := objKey{length: n}
	copy(k.digest[:], h.Sum(nil))
	if prev, ok := r.objs.find(k); ok {
		if err := r.f.Truncate(r.size); err != nil {
			return 0, 0, fmt.Errorf("truncate %s: %w", r.f.Name(), err)
		}
		return prev, n, nil
	}
	end := align(start+n, 8)
	if err := r.f.Truncate(end); err != nil {
		return 0, 0, fmt.Errorf("extend %s: %w", r.f.Name(), err)
	}
	r.size = end
	r.objs.add(k, start)
	return start, n, nil
}

// metaRegion is the metadata region, built in memory at Commit.
type metaRegion struct {
	buf  bytes.Buffer
	objs objects
}

func newMetaRegion() *metaRegion {
	m := &metaRegion{}
	m.buf.Write(regionHeader(regionMetadata))
	return m
}

// put stores b 8-byte aligned, once, and returns its offset.
func (m *metaRegion) put(b []byte) int64 {
	k := keyOf(b)
	if off, ok := m.objs.find(k); ok {
		return off
	}
	off := int64(m.buf.Len())
	m.buf.Write(b)
	m.buf.Write(make([]byte, align(int64(len(b)), 8)-int64(len(b))))
	m.objs.add(k, off)
	return off
}
