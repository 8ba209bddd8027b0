package cimfs

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"
)

// buildMetadata numbers the files and lays out the metadata region in the
// order cimfs.dll does in the real image: per file its SD, EAs and reparse
// buffer; the upcase table; directory link tables; back-link tables; stream
// tables; file tables; the file table directory; the Filesystem object.
// It refuses a tree the reader's limits would refuse (MaxFiles,
// MaxDirEntries, MaxObjectLen).
func (w *Writer) buildMetadata() (*metaRegion, regionOffset, error) {
	up := defaultUpcase
	var files []*wfile
	primary := map[*wfile]*node{}
	var visit func(n *node)
	visit = func(n *node) {
		if n.f.id == 0 {
			files = append(files, n.f)
			n.f.id = uint32(len(files))
			primary[n.f] = n
		}
		for _, k := range sortedKids(up, n) {
			visit(k)
		}
	}
	visit(w.root)
	if len(files) > MaxFiles {
		return nil, 0, fmt.Errorf("CIM %s: %d files, over the limit of %d (cimfs.MaxFiles)", w.name, len(files), MaxFiles)
	}
	table := func(es []linkEntry, valueSize int, what string, f *wfile) ([]byte, error) {
		if len(es) > MaxDirEntries {
			return nil, fmt.Errorf("CIM %s: %s of %q: %d entries, over the limit of %d (cimfs.MaxDirEntries)",
				w.name, what, primary[f].path(), len(es), MaxDirEntries)
		}
		t := encodeLinkTable(up, es, valueSize)
		if len(t) > MaxObjectLen {
			return nil, fmt.Errorf("CIM %s: %s of %q: %d bytes, over the limit of %d (cimfs.MaxObjectLen)",
				w.name, what, primary[f].path(), len(t), MaxObjectLen)
		}
		return t, nil
	}

	m := newMetaRegion()
	ro := func(off int64) regionOffset { return makeRO(w.base, off) }
	recs := make([]record, len(files))
	for i, f := range files {
		r := &recs[i]
		if sd := f.info.SecurityDescriptor; len(sd) > 0 {
			r.sd = ro(m.put(prefix16(sd)))
		}
		if ea := f.info.EAs; len(ea) > 0 {
			r.ea, r.eaLength = ro(m.put(ea)), uint16(len(ea))
		}
		if rp := f.info.ReparseData; len(rp) > 0 {
			r.reparse, r.reparseTag = ro(m.put(prefix16(rp))), binary.LittleEndian.Uint32(rp)
		}
	}
	upOff := m.put(upcaseBytes(up))
	for i, f := range files {
		if !f.dir {
			recs[i].data = f.data
			continue
		}
		recs[i].data = stream{typ: streamLinkTable}
		kids := f.names[0].kids
		if len(kids) == 0 {
			continue
		}
		var es []linkEntry
		for _, k := range kids {
			es = append(es, linkEntry{name: encodeName(k.name), value: le32(k.f.id)})
		}
		t, err := table(es, 4, "directory", f)
		if err != nil {
			return nil, 0, err
		}
		recs[i].data = stream{ro: ro(m.put(t)), length: int64(len(t)), typ: streamLinkTable}
	}
	for i, f := range files {
		var es []linkEntry
		if f == w.root.f {
			es = []linkEntry{{name: encodeName("."), value: le32(f.id)}}
		} else {
			for _, n := range f.names {
				es = append(es, linkEntry{name: encodeName(n.name), value: le32(n.parent.f.id)})
			}
		}
		t, err := table(es, 4, "names", f)
		if err != nil {
			return nil, 0, err
		}
		recs[i].backLinks = ro(m.put(t))
		if p := primary[f]; p.parent != nil {
			recs[i].parentID = p.parent.f.id
		} else {
			recs[i].parentID = f.id
		}
	}
	for i, f := range files {
		if len(f.streams) == 0 {
			continue
		}
		var es []linkEntry
		for _, s := range f.streams {
			v := make([]byte, 16)
			s.s.put(v)
			es = append(es, linkEntry{name: encodeName(s.name), value: v})
		}
		t, err := table(es, 16, "streams", f)
		if err != nil {
			return nil, 0, err
		}
		recs[i].streamTable = ro(m.put(t))
	}
	var ftd []byte
	for start := 0; start < len(files); start += filesPerTable {
		end := min(start+filesPerTable, len(files))
		t := make([]byte, recordLenV3*(end-start))
		for i := start; i < end; i++ {
			f := files[i]
			r := &recs[i]
			r.flags = attrsToFlags(f.info.Attributes)
			// Times were checked by Add (or come from a valid image).
			for j, tm := range [4]time.Time{f.info.CreationTime, f.info.LastWriteTime, f.info.ChangeTime, f.info.LastAccessTime} {
				r.times[j], _ = timeToFiletime(tm)
			}
			r.put(t[recordLenV3*(i-start):])
		}
		e := make([]byte, ftdEntryLen)
		binary.LittleEndian.PutUint64(e, uint64(ro(m.put(t))))
		binary.LittleEndian.PutUint16(e[8:], uint16(end-start))
		binary.LittleEndian.PutUint16(e[10:], recordLenV3)
		ftd = append(ftd, e...)
	}
	ftdOff := m.put(ftd)
	fsObj := make([]byte, filesystemLen)
	binary.LittleEndian.PutUint64(fsObj, uint64(ro(upOff)))
	binary.LittleEndian.PutUint64(fsObj[8:], uint64(ro(ftdOff)))
	binary.LittleEndian.PutUint32(fsObj[0x10:], uint32(len(ftd)/ftdEntryLen))
	binary.LittleEndian.PutUint32(fsObj[0x14:], w.root.f.id)
	return m, ro(m.put(fsObj)), nil
}

func sortedKids(up []uint16, n *node) []*node {
	kids := make([]*node, 0, len(n.kids))
	for _, k := range n.kids {
		kids = append(kids, k)
	}
	slices.SortFunc(kids, func(a, b *node) int { return compareNames(up, encodeName(a.name), encodeName(b.name)) })
	return kids
}

func prefix16(b []byte) []byte {
	out := make([]byte, 2+len(b))
	binary.LittleEndian.PutUint16(out, uint16(len(b)))
	copy(out[2:], b)
	return out
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// path is n's slash path from the root ("" for the root), for messages.
func (n *node) path() string {
	if n.parent == nil {
		return ""
	}
	return strings.TrimPrefix(n.parent.path()+"/"+n.name, "/")
}
