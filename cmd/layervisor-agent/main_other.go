//go:build !linux

// Command layervisor-agent is the guest agent of a layervisor utility VM;
// the VM is Linux, so on other systems it only says so.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "layervisor-agent runs inside a Linux utility VM")
	os.Exit(2)
}
