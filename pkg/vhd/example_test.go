package vhd_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/layervisor/layervisor/pkg/vhd"
)

// Create a dynamic VHD, write to it, and read it back.
func ExampleCreateDynamic() {
	dir, err := os.MkdirTemp("", "vhd-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "disk.vhd")

	d, err := vhd.CreateDynamic(path, 16<<20, vhd.DynamicOptions{}) // 2 MiB blocks
	if err != nil {
		log.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("hello, disk"), 3<<20); err != nil {
		log.Fatal(err)
	}
	if err := d.Close(); err != nil {
		log.Fatal(err)
	}

	d, err = vhd.OpenDynamic(path)
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 11)
	if _, err := d.ReadAt(buf, 3<<20); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d MiB, %d block(s) allocated: %q\n", d.Size()>>20, d.AllocatedBlocks(), buf)
	// Output: 16 MiB, 1 block(s) allocated: "hello, disk"
}

// Turn a raw disk image into a fixed VHD by appending a footer.
func ExampleAppendFixedFooter() {
	f, err := os.CreateTemp("", "fixed-*.vhd")
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil { // the raw image: 1 MiB
		log.Fatal(err)
	}
	if err := vhd.AppendFixedFooter(f); err != nil {
		log.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		log.Fatal(err)
	}
	ft, err := vhd.ReadFooter(f, st.Size())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Size(), ft.CurrentSize, ft.DiskType == vhd.DiskTypeFixed)
	// Output: 1049088 1048576 true
}
