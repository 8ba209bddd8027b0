package vhdx_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/layervisor/layervisor/pkg/vhdx"
)

// Create a dynamic VHDX, write to it, and read it back.
func Example() {
	dir, err := os.MkdirTemp("", "vhdx-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "disk.vhdx")

	d, err := vhdx.Create(path, vhdx.CreateOptions{Size: 64 << 20}) // dynamic, 1 MiB blocks
	if err != nil {
		log.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("hello, disk"), 5<<20); err != nil {
		log.Fatal(err)
	}
	if err := d.Close(); err != nil {
		log.Fatal(err)
	}

	d, err = vhdx.Open(path, vhdx.OpenOptions{ReadOnly: true})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 11)
	if _, err := d.ReadAt(buf, 5<<20); err != nil {
		log.Fatal(err)
	}
	info := d.Info()
	fmt.Printf("%s, %d MiB, %d of %d blocks present: %q\n",
		info.Type, info.VirtualSize>>20, info.BlocksPresent, info.Blocks, buf)
	// Output: dynamic, 64 MiB, 1 of 64 blocks present: "hello, disk"
}
