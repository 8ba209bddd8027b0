package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// LoopDevices counts the loop devices backed by file, as `losetup -j`
// does (/sys/block/loop*/loop/backing_file), once there are want of them
// or after a second: a device unmounted last goes once the kernel's
// autoclear has run.
func LoopDevices(t testing.TB, file string, want int) int {
	t.Helper()
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		backing, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, p := range backing {
			b, err := os.ReadFile(p) // fails for a device detached meanwhile
			if err == nil && strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)") == file {
				n++
			}
		}
		if n == want || time.Now().After(deadline) {
			return n
		}
	}
}
