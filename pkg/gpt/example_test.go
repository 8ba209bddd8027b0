package gpt_test

import (
	"fmt"
	"log"
	"os"

	"github.com/layervisor/layervisor/pkg/gpt"
)

// Partition a disk image and read its table back.
func Example() {
	f, err := os.CreateTemp("", "gpt-example-*.img")
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	const size = 64 << 20
	if err := f.Truncate(size); err != nil { // sparse
		log.Fatal(err)
	}

	t, err := gpt.New(size, 512)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := t.Add(gpt.MicrosoftReserved, "Microsoft reserved partition", 16<<20); err != nil {
		log.Fatal(err)
	}
	if _, err := t.Add(gpt.BasicData, "Basic data partition", 0); err != nil { // 0: the rest
		log.Fatal(err)
	}
	if err := t.Write(f); err != nil {
		log.Fatal(err)
	}

	read, err := gpt.Read(f, size, 512)
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range read.Partitions {
		fmt.Printf("%-28s at %2d MiB, %2d MiB\n", p.Name, p.Offset(512)>>20, p.Size(512)>>20)
	}
	// Output:
	// Microsoft reserved partition at  1 MiB, 16 MiB
	// Basic data partition         at 17 MiB, 46 MiB
}
