package cimfs_test

import (
	"fmt"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/layervisor/layervisor/pkg/cimfs"
)

// Write a small CIM, then read it through io/fs.
func Example() {
	dir, err := os.MkdirTemp("", "cimfs-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	w, err := cimfs.Create(dir, "layer.cim", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close() // after Commit, a no-op; before, it removes what was written
	for _, err := range []error{
		w.Add("Files", cimfs.FileInfo{Attributes: cimfs.AttrDirectory}, nil),
		w.Add("Files/hello.txt", cimfs.FileInfo{Attributes: cimfs.AttrArchive}, strings.NewReader("Hello world!")),
		w.Add("Hives", cimfs.FileInfo{Attributes: cimfs.AttrDirectory}, nil),
		w.Commit(),
	} {
		if err != nil {
			log.Fatal(err)
		}
	}

	img, err := cimfs.Open(filepath.Join(dir, "layer.cim"))
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	fsys := img.FS()
	b, err := fs.ReadFile(fsys, "files/HELLO.TXT") // names ignore case, as on Windows
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", b)
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != "." {
			fmt.Println(p, d.Type())
		}
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// Hello world!
	// Files d---------
	// Files/hello.txt ----------
	// Hives d---------
}
