//go:build unix

package uvm

import (
	"os"
	"syscall"
)

// allocated is the space a file takes on disk (sparse files less than
// their size).
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
