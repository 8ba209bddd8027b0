package cimfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// writeAt patches a file in place (a sparse region file is never read whole).
func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	must(t, err)
	defer f.Close()
	_, err = f.WriteAt(b, off)
	must(t, err)
}

// allocated runs fn and returns the bytes it allocated.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// readEverything walks the image and reads all it can reach, as
// `layervisor cim ls -r` and extraction do.
func readEverything(img *Image) error {
	if _, err := img.ReadDir(""); err != nil {
		return err
	}
	return img.Walk(func(p string, f *File) error {
		if _, err := f.Info(); err != nil {
			return err
		}
		if _, err := f.Links(); err != nil {
			return err
		}
		if _, err := f.Streams(); err != nil {
			return err
		}
		if !f.IsDir() {
			r, err := f.Open()
			if err != nil {
				return err
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				return err
			}
		}
		return nil
	})
}

// A CIM's region files may be sparse and far larger than their content: a
// region of 64 GiB must cost the reader nothing more than a small one, and
// a structure claiming a huge object inside it must be refused (with an
// error naming the limit) before anything of that size is allocated.
func TestSparseHugeRegion(t *testing.T) {
	const huge = 64 << 30
	const bound = 16 << 20 // what reading the whole small image may allocate
	type where struct {
		dir    string
		region string // the metadata region file
		rec    int64  // offset of the root's file record in it
		table  int64  // offset of the root's directory table in it
		fsObj  int64  // offset of the Filesystem object in it
	}
	setup := func(t *testing.T) where {
		dir, w := smallImage(t)
		img := mustOpen(t, filepath.Join(dir, "t.cim"))
		hdr, err := os.ReadFile(filepath.Join(dir, "t.cim"))
		must(t, err)
		root, err := img.Stat("")
		must(t, err)
		wh := where{dir: dir, region: filepath.Join(dir, regionName(w.guid, 0)),
			rec:   img.ftd[0].table.offset() + int64(img.root-1)*int64(img.ftd[0].entrySize),
			table: root.rec.data.ro.offset(),
			fsObj: regionOffset(binary.LittleEndian.Uint64(hdr[0x38:])).offset()}
		img.Close()
		if regionOffset(binary.LittleEndian.Uint64(hdr[0x38:])).index() != 0 || img.ftd[0].table.index() != 0 {
			t.Fatal("metadata is not in region 0")
		}
		must(t, os.Truncate(wh.region, huge))
		return wh
	}
	open := func(t *testing.T, wh where) (img *Image, err error) {
		t.Helper()
		var alloc uint64
		alloc = allocated(func() {
			img, err = Open(filepath.Join(wh.dir, "t.cim"))
			if err == nil {
				err = readEverything(img)
			}
		})
		if alloc > bound {
			t.Errorf("reading the image allocated %d MiB, want under %d MiB", alloc>>20, bound>>20)
		}
		if img != nil {
			t.Cleanup(func() { img.Close() })
		}
		return img, err
	}
	wantCorrupt := func(t *testing.T, err error, want ...string) {
		t.Helper()
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("want ErrCorrupt, got %v", err)
		}
		for _, s := range want {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not say %q", err, s)
			}
		}
	}
	// A stream value: location, then length with the type in bits 48..55.
	streamAt := func(off, length int64, typ uint8) []byte {
		b := make([]byte, 16)
		stream{ro: makeRO(0, off), length: length, typ: typ}.put(b)
		return b
	}

	t.Run("sparse region", func(t *testing.T) {
		wh := setup(t)
		if _, err := open(t, wh); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("huge directory", func(t *testing.T) {
		wh := setup(t)
		// The root's table now claims 1 GiB, all inside the sparse region.
		writeAt(t, wh.region, wh.rec+0x28, streamAt(wh.table, 1<<30, streamLinkTable))
		_, err := open(t, wh)
		wantCorrupt(t, err, "directory FileID 1", "1073741824 bytes", "cimfs.MaxObjectLen")
	})
	t.Run("huge file table directory", func(t *testing.T) {
		wh := setup(t)
		writeAt(t, wh.region, wh.fsObj+0x10, binary.LittleEndian.AppendUint32(nil, 1<<26))
		_, err := open(t, wh)
		wantCorrupt(t, err, "67108864 file tables", "cimfs.MaxFiles")
	})
	t.Run("huge back-link table", func(t *testing.T) {
		wh := setup(t)
		// A u32 length prefix of 1 GiB, far into the sparse part.
		writeAt(t, wh.region, 1<<32, binary.LittleEndian.AppendUint32(nil, 1<<30))
		writeAt(t, wh.region, wh.rec+0x60, binary.LittleEndian.AppendUint64(nil, uint64(makeRO(0, 1<<32))))
		_, err := open(t, wh)
		wantCorrupt(t, err, "back links of FileID 1", "1073741824 bytes", "cimfs.MaxObjectLen")
	})
	t.Run("directory outside the region", func(t *testing.T) {
		wh := setup(t)
		writeAt(t, wh.region, wh.rec+0x28, streamAt(huge-8, 64, streamLinkTable))
		_, err := open(t, wh)
		wantCorrupt(t, err, "directory FileID 1", "is outside", filepath.Base(wh.region))
	})
}

// Walk holds the table of every directory from the root to where it is:
// a chain of directories whose tables are each almost as large as allowed
// (32 MiB of padding around one entry, in a sparse region) must stop once
// they add up to maxWalkHeld, not hold them all.
func TestWalkHeldTables(t *testing.T) {
	const chain = 10
	dir, w := smallImage(t)
	hdr, err := os.ReadFile(filepath.Join(dir, "t.cim"))
	must(t, err)
	region := filepath.Join(dir, regionName(w.guid, 0))
	must(t, os.Truncate(region, 64<<30))
	fsObj := regionOffset(binary.LittleEndian.Uint64(hdr[0x38:]))
	rf, err := os.Open(region)
	must(t, err)
	b := make([]byte, 8)
	_, err = rf.ReadAt(b, fsObj.offset()+8)
	rf.Close()
	must(t, err)
	ftd := regionOffset(binary.LittleEndian.Uint64(b))

	// Directory i (FileID i) has one entry, directory i+1, in a table of
	// almost MaxObjectLen bytes; the file table holding them lies at 8 GiB.
	const tables, records = int64(4 << 30), int64(8 << 30)
	const tableLen = MaxObjectLen - 4096
	for i := int64(1); i <= chain; i++ {
		var r record
		r.data = stream{typ: streamLinkTable}
		if i < chain {
			at := tables + i*2*MaxObjectLen
			tab := make([]byte, 20)
			binary.LittleEndian.PutUint32(tab, tableLen)
			binary.LittleEndian.PutUint32(tab[4:], 1)
			binary.LittleEndian.PutUint32(tab[8:], uint32(i+1)) // the entry: FileID i+1
			binary.LittleEndian.PutUint32(tab[12:], 16)         // its name, at 16: "d"
			binary.LittleEndian.PutUint16(tab[16:], 1)
			binary.LittleEndian.PutUint16(tab[18:], 'd')
			writeAt(t, region, at, tab)
			r.data = stream{ro: makeRO(0, at), length: tableLen, typ: streamLinkTable}
		}
		rec := make([]byte, recordLenV3)
		r.put(rec)
		writeAt(t, region, records+(i-1)*recordLenV3, rec)
	}
	e := make([]byte, ftdEntryLen)
	binary.LittleEndian.PutUint64(e, uint64(makeRO(0, records)))
	binary.LittleEndian.PutUint16(e[8:], chain)
	binary.LittleEndian.PutUint16(e[10:], recordLenV3)
	writeAt(t, region, ftd.offset(), e)

	img := mustOpen(t, filepath.Join(dir, "t.cim"))
	depth := 0
	err = img.Walk(func(p string, f *File) error {
		depth = strings.Count(p, "/") + 1
		return nil
	})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "directory tables and paths from the root") {
		t.Fatalf("walk of a chain of %d huge tables: %v (reached depth %d)", chain, err, depth)
	}
	if want := maxWalkHeld / tableLen; depth != want {
		t.Errorf("walk stopped at depth %d, want %d", depth, want)
	}
}

// A link table's count and names are checked before anything is decoded:
// entries sharing one long name would make decoding cost far more than
// the table, and a count over MaxDirEntries is refused.
func TestLinkTableAmplification(t *testing.T) {
	table := func(n int, sharedName bool) []byte {
		es := make([]linkEntry, n)
		for i := range es {
			es[i] = linkEntry{name: encodeName(fmt.Sprint(i)), value: le32(uint32(i + 2))}
		}
		es[0].name = encodeName(strings.Repeat("x", maxNameLen))
		b := encodeLinkTable(defaultUpcase, es, 4)
		if sharedName { // every offset points at the long name
			offs := b[8+4*n:]
			long := uint32(0)
			for i := range n {
				if o := binary.LittleEndian.Uint32(offs[4*i:]); binary.LittleEndian.Uint16(b[o:]) == maxNameLen {
					long = o
				}
			}
			for i := range n {
				binary.LittleEndian.PutUint32(offs[4*i:], long)
			}
		}
		return b
	}
	if _, err := decodeLinkTable(table(1000, false), 4); err != nil {
		t.Fatalf("a good table: %v", err)
	}
	if _, err := decodeLinkTable(table(1000, true), 4); err == nil || !strings.Contains(err.Error(), "names overlap") {
		t.Errorf("entries sharing a name: %v", err)
	}
	// A count over the limit, in a table large enough to hold it.
	b := make([]byte, 8+8*(MaxDirEntries+1))
	binary.LittleEndian.PutUint32(b, uint32(len(b)))
	binary.LittleEndian.PutUint32(b[4:], MaxDirEntries+1)
	var err error
	if alloc := allocated(func() { _, err = decodeLinkTable(b, 4) }); alloc > 1<<20 {
		t.Errorf("refusing the table allocated %d bytes", alloc)
	}
	if err == nil || !strings.Contains(err.Error(), "cimfs.MaxDirEntries") {
		t.Errorf("count over MaxDirEntries: %v", err)
	}
}
