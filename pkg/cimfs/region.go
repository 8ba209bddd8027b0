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

	// Large objects are digested on goroutines of their own (see putLarge).
	free    chan []byte        // the ring of chunk buffers not in use
	pending []*hashJob         // placed objects whose digest is not known yet
	lens    map[int64]struct{} // lengths of every large object, pending or not
}

// SHA-512 is most of the CPU a large file costs (60%), so putLarge hands
// each chunk to a hashing goroutine while it writes the chunk, and does not
// wait for the digest unless it must: with a second core free, importing
// large files takes about two thirds of the time. What is in flight is the
// ring of chunk buffers (2 MiB), whatever the file sizes.
const (
	ringChunks    = 8
	ringChunkSize = 256 << 10
)

// hashJob digests one large object, chunk by chunk, in order.
type hashJob struct {
	in          chan []byte
	done        chan struct{} // closed when sum is set
	sum         [24]byte
	off, length int64
}

func startHash(free chan<- []byte) *hashJob {
	j := &hashJob{in: make(chan []byte, ringChunks), done: make(chan struct{})}
	go func() {
		h := sha512.New()
		for b := range j.in {
			h.Write(b)
			free <- b[:cap(b)] // never blocks: free holds the whole ring
		}
		copy(j.sum[:], h.Sum(nil))
		close(j.done)
	}()
	return j
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

// putLarge streams first and then the rest of src to a page-aligned offset,
// digesting it on another goroutine; a duplicate of earlier content is cut
// off again and the earlier copy used.
//
// Only an object of the same length can be a duplicate, so when no earlier
// object has this length the object stays where it is and its digest is
// collected later (settle): its hashing overlaps the next file's I/O. The
// result is the same as hashing each object before placing the next.
func (r *dataRegion) putLarge(first []byte, src io.Reader) (off, n int64, err error) {
	if r.free == nil {
		r.free = make(chan []byte, ringChunks)
		for range ringChunks {
			r.free <- make([]byte, ringChunkSize)
		}
		r.lens = map[int64]struct{}{}
	}
	r.settle(false)
	start := align(r.size, pageSize)
	j := startHash(r.free)
	closed := false
	defer func() {
		if !closed {
			close(j.in)
		}
		if err != nil {
			<-j.done // its buffers are back in the ring
			r.f.Truncate(r.size)
		}
	}()
	for eof := false; !eof; {
		b := <-r.free
		m := copy(b, first)
		first = nil
		k, rerr := io.ReadFull(src, b[m:])
		m += k
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			eof = true
		} else if rerr != nil {
			r.free <- b
			return 0, 0, fmt.Errorf("read file data: %w", rerr)
		}
		if m == 0 {
			r.free <- b
			continue
		}
		j.in <- b[:m] // hashed while it is written
		if _, err := r.f.WriteAt(b[:m], start+n); err != nil {
			return 0, 0, fmt.Errorf("write %s: %w", r.f.Name(), err)
		}
		n += int64(m)
	}
	close(j.in)
	closed = true
	j.off, j.length = start, n
	if _, seen := r.lens[n]; seen {
		<-j.done
		r.settle(true, n)
		k := objKey{length: n, digest: j.sum}
		if prev, ok := r.objs.find(k); ok {
			if err := r.f.Truncate(r.size); err != nil {
				return 0, 0, fmt.Errorf("truncate %s: %w", r.f.Name(), err)
			}
			return prev, n, nil
		}
	}
	end := align(start+n, 8)
	if err := r.f.Truncate(end); err != nil {
		return 0, 0, fmt.Errorf("extend %s: %w", r.f.Name(), err)
	}
	r.size = end
	r.lens[n] = struct{}{}
	r.pending = append(r.pending, j)
	return start, n, nil
}

// settle moves pending objects into the object index: those already hashed,
// or with wait every one (of the given lengths only, if any are given),
// waiting for their digests.
func (r *dataRegion) settle(wait bool, lengths ...int64) {
	r.pending = slices.DeleteFunc(r.pending, func(j *hashJob) bool {
		if len(lengths) > 0 && !slices.Contains(lengths, j.length) {
			return false
		}
		if wait {
			<-j.done
		} else {
			select {
			case <-j.done:
			default:
				return false
			}
		}
		r.objs.add(objKey{length: j.length, digest: j.sum}, j.off)
		return true
	})
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
