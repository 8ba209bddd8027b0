package regf_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/regtext"
)

// The benchmark hive: 100 keys of 1000 subkeys each (100,101 keys with the
// root), three values per leaf (300,000 values: a string, a DWORD and 32
// bytes of binary).
const benchGroups, benchLeaves = 100, 1000

var (
	benchOnce sync.Once
	benchHive []byte
	benchErr  error
)

func buildBench(modify bool) *regf.Hive {
	h := regf.New()
	h.Layered = modify
	for i := 0; i < benchGroups; i++ {
		grp, _ := h.Root.CreateSubkey(fmt.Sprintf("Group%03d", i))
		for j := 0; j < benchLeaves; j++ {
			k, _ := grp.CreateSubkey(fmt.Sprintf("Key%04d", j))
			if modify { // a delta touching every key
				k.SetValue("dword", regf.RegDWord, regf.DWordData(uint32(j+1)))
				k.SetTombstone("binary")
				continue
			}
			k.SetValue("string", regf.RegSZ, regf.StringData(fmt.Sprintf("value %d/%d", i, j)))
			k.SetValue("dword", regf.RegDWord, regf.DWordData(uint32(j)))
			k.SetValue("binary", regf.RegBinary, make([]byte, 32))
		}
	}
	return h
}

func benchFile(b *testing.B) (string, []byte) {
	b.Helper()
	benchOnce.Do(func() { benchHive, benchErr = buildBench(false).Marshal() })
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	p := filepath.Join(b.TempDir(), "bench.hive")
	if err := os.WriteFile(p, benchHive, 0o644); err != nil {
		b.Fatal(err)
	}
	return p, benchHive
}

func BenchmarkParse(b *testing.B) {
	_, data := benchFile(b)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := regf.Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshal(b *testing.B) {
	_, data := benchFile(b)
	h, err := regf.Parse(data)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := h.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExport compares reading the hive file and printing .reg text:
// ours in-process against the hivexregedit command on the same file.
func BenchmarkExport(b *testing.B) {
	path, _ := benchFile(b)
	b.Run("layervisor", func(b *testing.B) {
		for b.Loop() {
			h, err := regf.ReadFile(path)
			if err != nil {
				b.Fatal(err)
			}
			w := bufio.NewWriter(io.Discard)
			if err := regtext.Export(w, h.Root, ""); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("hivexregedit", func(b *testing.B) {
		testutil.NeedTool(b, "hivexregedit")
		for b.Loop() {
			cmd := exec.Command("hivexregedit", "--export", path, `\`)
			cmd.Stdout = io.Discard
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkMerge merges a delta touching every key (one value overridden,
// one tombstoned) onto the benchmark hive, in memory.
func BenchmarkMerge(b *testing.B) {
	_, data := benchFile(b)
	base, err := regf.Parse(data)
	if err != nil {
		b.Fatal(err)
	}
	delta := buildBench(true)
	for b.Loop() {
		if _, err := regf.Merge(base, delta); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchGroups*benchLeaves)*float64(b.N)/b.Elapsed().Seconds(), "keys/s")
}
