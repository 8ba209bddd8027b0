package regf_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/layervisor/layervisor/pkg/regf"
)

// Build a hive, write it to a file, and read a value back.
func Example() {
	h := regf.New()
	k, err := h.CreateKey(`ControlSet001\Control\ComputerName`)
	if err != nil {
		log.Fatal(err)
	}
	if err := k.SetValue("ComputerName", regf.RegSZ, regf.StringData("CONTAINER")); err != nil {
		log.Fatal(err)
	}
	if err := k.SetValue("Build", regf.RegDWord, regf.DWordData(26100)); err != nil {
		log.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "regf-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "SYSTEM")
	if err := h.WriteFile(path); err != nil {
		log.Fatal(err)
	}

	h2, err := regf.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	k2 := h2.Lookup(`controlset001\control\computername`) // names ignore case
	name, err := k2.Value("ComputerName").Text()
	if err != nil {
		log.Fatal(err)
	}
	build, err := k2.Value("Build").Uint()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(k2.Path(), name, build)
	// Output: ControlSet001\Control\ComputerName CONTAINER 26100
}

// Stack a container layer's delta hive on its parent's hive.
func ExampleMerge() {
	base := regf.New()
	k, _ := base.CreateKey(`Software\App`)
	k.SetValue("Version", regf.RegSZ, regf.StringData("1.0"))
	k.SetValue("Obsolete", regf.RegSZ, regf.StringData("yes"))

	delta := regf.New()
	delta.Layered = true
	d, _ := delta.CreateKey(`Software\App`)
	d.SetValue("Version", regf.RegSZ, regf.StringData("2.0"))
	d.SetTombstone("Obsolete") // this layer deletes the value

	merged, err := regf.Merge(base, delta)
	if err != nil {
		log.Fatal(err)
	}
	for _, v := range merged.Lookup(`Software\App`).Values() {
		fmt.Println(v.Name, v.PlainText())
	}
	// Output: Version 2.0
}
