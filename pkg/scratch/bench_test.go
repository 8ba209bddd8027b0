package scratch

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BenchmarkClone compares a scratch clone with copies of the template by
// cp, for a 1 GiB and a 20 GiB template. Report the ratio of ns/op.
//
//	go test -run '^$' -bench Clone ./pkg/scratch/
//
// "cp-full" is cp --sparse=never (a full copy), "cp" is coreutils' default,
// which is itself sparse-aware. cp-full on 20 GiB writes 20 GiB: it runs
// only with LAYERVISOR_BENCH_FULLCOPY_20G=1.
func BenchmarkClone(b *testing.B) {
	root := b.TempDir()
	for _, size := range []int64{1 << 30, 20 << 30} {
		tpl, err := EnsureTemplate(context.Background(), root, size)
		if err != nil {
			b.Fatal(err)
		}
		name := fmt.Sprintf("%dGiB", size>>30)
		b.Run(name+"/layervisor-clone", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				dst := filepath.Join(root, fmt.Sprintf("c%d", i))
				if err := Clone(context.Background(), tpl, dst); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.Remove(dst)
				b.StartTimer()
			}
		})
		for _, mode := range []string{"cp", "cp-full"} {
			if mode == "cp-full" && size > 1<<30 && os.Getenv("LAYERVISOR_BENCH_FULLCOPY_20G") == "" {
				continue
			}
			b.Run(name+"/"+mode, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					dst := filepath.Join(root, fmt.Sprintf("cp%d", i))
					args := []string{tpl, dst}
					if mode == "cp-full" {
						args = append([]string{"--sparse=never"}, args...)
					}
					if out, err := exec.Command("cp", args...).CombinedOutput(); err != nil {
						b.Fatalf("cp: %v %s", err, out)
					}
					b.StopTimer()
					os.Remove(dst)
					b.StartTimer()
				}
			})
		}
	}
}
