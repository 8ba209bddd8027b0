//go:build !linux

package main

import "github.com/spf13/cobra"

// run and serve need Linux (namespaces and an OCI runtime; loop devices
// and overlayfs): other systems build the CLI without them.

func newRunCmd(*options) *cobra.Command   { return nil }
func newServeCmd(*options) *cobra.Command { return nil }
