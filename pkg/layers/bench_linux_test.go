package layers

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkHostRootfsReady measures mount-to-rootfs-ready of a 10-layer
// container, cold (no layer mounted yet) and warm (another container keeps
// every layer mounted). The containerd anchor is in ./bench.
func BenchmarkHostRootfsReady(b *testing.B) {
	if testing.Short() {
		b.Skip("short")
	}
	root := b.TempDir()
	h := &Host{StateDir: filepath.Join(root, "mounts")}
	var ro []string
	for i := 9; i >= 0; i-- {
		files := map[string]string{fmt.Sprintf("layer%d/", i): ""}
		for j := 0; j < 50; j++ {
			files[fmt.Sprintf("layer%d/f%d", i, j)] = "content"
		}
		ro = append(ro, makeLayerB(b, filepath.Join(root, fmt.Sprintf("l%d", i)), files))
	}
	scr := makeScratchB(b, filepath.Join(root, "c"))
	ctx := context.Background()
	run := func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := h.Mount(ctx, "bench", Layers{ReadOnly: ro, Scratch: scr}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := h.Unmount(ctx, "bench", UnmountAll); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.Run("cold", run)
	holder := makeScratchB(b, filepath.Join(root, "holder"))
	if _, err := h.Mount(ctx, "holder", Layers{ReadOnly: ro, Scratch: holder}); err != nil {
		b.Fatal(err)
	}
	b.Run("warm", run)
	h.Unmount(ctx, "holder", UnmountAll)
}
