package main

import (
	"io"
	"strings"
	"testing"
)

// Cobra checks required and exclusive flags and argument shapes before a
// command runs: in-process here, since each newRootCmd is a fresh tree.
func TestFlagValidation(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"container", "create", "x"}, `required flag(s) "image" not set`},
		{[]string{"uvm", "create", "v", "--windows-image", "w:1", "--template", "t.vhdx"}, "[template windows-image] were all set"},
		{[]string{"uvm", "template", "rm"}, "give template keys (layervisor uvm template ls) or --all"},
		{[]string{"uvm", "template", "rm", "k", "--all"}, "give template keys (layervisor uvm template ls) or --all"},
		{[]string{"uvm", "exec", "v", "true"}, "usage: layervisor uvm exec ID -- CMD [ARGS...]"},
		{[]string{"disk", "create", "x.vhdx"}, "SIZE is required unless --parent is given"},
		{[]string{"disk", "create", "x.vhdx", "1M", "2M"}, "accepts between 1 and 2 arg(s)"},
		{[]string{"hive", "get", "SYSTEM"}, "accepts between 2 and 3 arg(s)"},
		{[]string{"--log-level", "loud", "gc"}, `--log-level "loud"`},
	} {
		root := newRootCmd()
		root.SetArgs(append([]string{"--root", t.TempDir()}, tc.args...))
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		if err := root.Execute(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("layervisor %s: %v, want an error with %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
