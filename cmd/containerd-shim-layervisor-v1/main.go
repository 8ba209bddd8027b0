//go:build linux

// Command containerd-shim-layervisor-v1 is containerd's runtime v2 shim for
// layervisor's utility VMs (runtime type io.containerd.layervisor.v1): each
// task runs in a utility VM of its own, its root file system assembled in
// the guest from the layervisor snapshotter's layer images. It works with
// containerd 2.x and with containerd 1.6. See package pkg/shim.
package main

import (
	"os"

	"github.com/layervisor/layervisor/cmd/internal/envconfig"
	"github.com/layervisor/layervisor/pkg/shim"
)

func main() {
	envconfig.ArmCrashPoint()
	os.Exit(shim.Main(os.Args[1:], envconfig.UVM()))
}
