package cimfs

import (
	"bytes"
	"io"
	"path/filepath"
	"testing"
	"time"
)

func TestReadRealImage(t *testing.T) {
	dir := realDir(t)
	img, err := Open(filepath.Join(dir, "test.cim"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Major != 3 || img.Minor != 0 {
		t.Errorf("version %d.%d, want 3.0", img.Major, img.Minor)
	}
	if img.Own.ID.String() != realGUID || img.Own.Count != 2 || len(img.Parents) != 0 {
		t.Errorf("region set %v/%d, parents %v", img.Own.ID, img.Own.Count, img.Parents)
	}
	if img.ftd[0].entrySize != 0x68 || img.ftd[0].count != 2 {
		t.Errorf("file table %+v, want 2 records of 0x68", img.ftd[0])
	}
	var paths []string
	if err := img.Walk(func(p string, f *File) error { paths = append(paths, p); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(paths) != 2 || paths[0] != "" || paths[1] != "hello.txt" {
		t.Fatalf("tree %q", paths)
	}
	root, err := img.Stat("")
	if err != nil || !root.IsDir() || root.Attributes != AttrDirectory || root.ID != 1 {
		t.Fatalf("root %+v %v", root, err)
	}
	f, err := img.Stat("HELLO.TXT") // names compare case-insensitively
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != "hello.txt" || f.ID != 2 || f.Size != 12 || f.Attributes != AttrArchive || f.IsDir() {
		t.Errorf("hello.txt: %+v", f)
	}
	r, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r)
	if string(b) != "Hello world!" {
		t.Errorf("content %q", b)
	}
	sd, err := f.SecurityDescriptor()
	if err != nil || len(sd) != 0xa0 || !bytes.HasPrefix(sd, []byte{1, 0, 4, 0xa0}) {
		t.Errorf("SD %x %v", sd, err)
	}
	ea, err := f.EAs()
	if err != nil || len(ea) != 0x4de || !bytes.Contains(ea, []byte("$KERNEL.SEC.ENDPOINTDLP")) {
		t.Errorf("EAs (%d bytes) %v", len(ea), err)
	}
	want := map[string]uint64{"creation": 0x01d9033090989265, "write": 0x01d9033093917def, "change": 0x01d9033093f2da34, "access": 0x01d9033093917def}
	got := map[string]time.Time{"creation": f.CreationTime, "write": f.LastWriteTime, "change": f.ChangeTime, "access": f.LastAccessTime}
	for k, v := range want {
		if ft, _ := timeToFiletime(got[k]); ft != v {
			t.Errorf("%s time %v = %#x, want %#x", k, got[k], ft, v)
		}
	}
	links, err := f.Links()
	if err != nil || len(links) != 1 || links[0] != (Link{1, "hello.txt"}) {
		t.Errorf("links %v %v", links, err)
	}
	rl, err := root.Links()
	if err != nil || len(rl) != 1 || rl[0] != (Link{1, "."}) {
		t.Errorf("root links %v %v", rl, err)
	}
	up, err := img.UpcaseTable()
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range up {
		if defaultUpcase[i] != v {
			t.Fatalf("upcase[%#x] = %#x, generated %#x", i, v, defaultUpcase[i])
		}
	}
}
