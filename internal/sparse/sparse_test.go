package sparse

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func TestDataExtents(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 64 << 20
	f.Truncate(size)
	f.WriteAt([]byte("data"), 8<<20)
	f.WriteAt([]byte("tail"), size-4)
	exts, err := DataExtents(f, size)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "linux" {
		if len(exts) != 1 || exts[0] != (Extent{0, size}) {
			t.Fatalf("extents %v", exts)
		}
		return
	}
	// Two islands, each within a file-system block around the write.
	if len(exts) != 2 || exts[0].Off > 8<<20 || exts[0].Off+exts[0].Len < 8<<20+4 || exts[1].Off+exts[1].Len != size {
		t.Fatalf("extents %v, want one around 8 MiB and one at the end", exts)
	}
	if exts[0].Len > 1<<20 {
		t.Errorf("the island at 8 MiB is %d bytes long: holes were read as data", exts[0].Len)
	}
}
