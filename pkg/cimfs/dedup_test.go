package cimfs

import (
	"bytes"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// failingReader yields n bytes of content, then an error.
type failingReader struct {
	r io.Reader
}

var errSource = errors.New("source failed")

func (f failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errSource
	}
	return n, err
}

// TestLargeObjectsPlacedAsIfHashedInOrder adds large contents whose digests
// the writer computes in the background — duplicates, same lengths with
// other bytes, chunk-sized and multi-chunk ones, a stream, a failed read —
// and checks every offset, the data region's size and the objectid file
// against a plain model that hashes each object before placing the next.
func TestLargeObjectsPlacedAsIfHashedInOrder(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	blob := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return b
	}
	a, b, big := blob(10000), blob(10000), blob(ringChunkSize*2+12345)
	type item struct {
		path, stream string
		data         []byte
		fail         bool
	}
	items := []item{
		{path: "a", data: a},
		{path: "b", data: b}, // same length as a, other bytes
		{path: "a2", data: bytes.Clone(a)},
		{path: "page", data: blob(pageSize)},
		{path: "big", data: big},
		{path: "chunk", data: blob(ringChunkSize)},
		{path: "broken", data: blob(ringChunkSize + 1), fail: true},
		{path: "a", stream: "copy", data: bytes.Clone(big)},
		{path: "b2", data: bytes.Clone(b)},
		{path: "odd", data: blob(pageSize + 3)},
	}
	for i := range 40 { // many distinct lengths in flight at once
		items = append(items, item{path: fmt.Sprintf("n%d", i), data: blob(5000 + 977*i)})
	}
	items = append(items, item{path: "last", data: bytes.Clone(items[len(items)-7].data)})

	// The model: the same placement, hashing each object first.
	want := map[string]int64{}
	model := objects{}
	size := int64(regionHeaderLen)
	for _, it := range items {
		if it.fail {
			continue
		}
		s := sha512.Sum512(it.data)
		k := objKey{length: int64(len(it.data))}
		copy(k.digest[:], s[:])
		off, ok := model.find(k)
		if !ok {
			off = align(size, pageSize)
			size = align(off+int64(len(it.data)), 8)
			model.add(k, off)
		}
		want[it.path+":"+it.stream] = off
	}

	dir := t.TempDir()
	w, err := Create(dir, "d.cim", nil)
	must(t, err)
	defer w.Close()
	for _, it := range items {
		var r io.Reader = bytes.NewReader(it.data)
		if it.fail {
			r = failingReader{r}
		}
		if it.stream != "" {
			err = w.AddAlternateStream(it.path, it.stream, r)
		} else {
			err = w.Add(it.path, FileInfo{}, r)
		}
		if it.fail != (err != nil) || (it.fail && !errors.Is(err, errSource)) {
			t.Fatalf("add %s:%s: %v", it.path, it.stream, err)
		}
	}
	guid, dataRegion := w.guid, w.data.n
	mustCommit(t, w)

	img := mustOpen(t, filepath.Join(dir, "d.cim"))
	got := map[string]int64{}
	must(t, img.Walk(func(p string, f *File) error {
		if f.IsDir() {
			return nil
		}
		got[p+":"] = f.rec.data.ro.offset()
		ss, err := f.Streams()
		for _, s := range ss {
			got[p+":"+s.Name] = s.s.ro.offset()
		}
		return err
	}))
	for k, off := range want {
		if got[k] != off {
			t.Errorf("%s at %#x, want %#x", k, got[k], off)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d objects in the image, want %d", len(got), len(want))
	}
	for _, it := range items {
		if !it.fail && it.stream == "" && content(t, img, it.path) != string(it.data) {
			t.Errorf("%s: content differs", it.path)
		}
	}
	st, err := os.Stat(filepath.Join(dir, regionName(guid, dataRegion)))
	must(t, err)
	if st.Size() != size {
		t.Errorf("data region is %d bytes, want %d", st.Size(), size)
	}
	oid, err := os.ReadFile(filepath.Join(dir, objectIDName(guid, dataRegion)))
	must(t, err)
	if !bytes.Equal(oid, model.objectIDFile(dataRegion, regionData)) {
		t.Error("objectid file of the data region differs from the model's")
	}
}
