//go:build !linux

package uvm

func unmountUnder(dir string) error { return nil }

func hostProcesses(root string) []Process { return nil }
