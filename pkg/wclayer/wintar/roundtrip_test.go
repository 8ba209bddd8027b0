package wintar_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/pkg/wclayer/synth"
	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// TestRoundTrip reads generated base and child layers, writes every entry
// back and checks the output is byte-identical and reads back to the same
// entries; together the layers hold every kind of entry.
func TestRoundTrip(t *testing.T) {
	base := synth.Options{Seed: 7, Files: 300, Bytes: 1 << 20, UtilityVM: true}
	kinds := map[wintar.Kind]int{}
	for _, gen := range []struct {
		name string
		fn   func(io.Writer) (synth.Stats, error)
	}{
		{"base", func(w io.Writer) (synth.Stats, error) { return synth.Base(w, base) }},
		{"child", func(w io.Writer) (synth.Stats, error) { return synth.Child(w, base, 8) }},
	} {
		var orig bytes.Buffer
		st, err := gen.fn(&orig)
		if err != nil {
			t.Fatalf("%s: %v", gen.name, err)
		}
		entries, err := readAll(bytes.NewReader(orig.Bytes()))
		if err != nil {
			t.Fatalf("%s: %v", gen.name, err)
		}
		if len(entries) != st.Entries {
			t.Errorf("%s: read %d entries, the generator wrote %d", gen.name, len(entries), st.Entries)
		}
		var again bytes.Buffer
		w := wintar.NewWriter(&again)
		for _, e := range entries {
			kinds[e.Kind]++
			if err := w.WriteEntry(e.Entry, strings.NewReader(e.data)); err != nil {
				t.Fatalf("%s: %v", gen.name, err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(orig.Bytes(), again.Bytes()) {
			t.Errorf("%s: written again, %d bytes differ from the original %d", gen.name, again.Len(), orig.Len())
		}
		back, err := readAll(&again)
		if err != nil {
			t.Fatalf("%s: reading the copy: %v", gen.name, err)
		}
		if !reflect.DeepEqual(back, entries) {
			t.Errorf("%s: entries differ after the round trip", gen.name)
		}
	}
	for k := wintar.KindFile; k <= wintar.KindWhiteout; k++ {
		if kinds[k] == 0 {
			t.Errorf("no %s in the generated layers", k)
		}
	}
}

// BenchmarkReadBase reads a generated base layer of 20 000 files
// (LAYERVISOR_BENCH_MB sets its data size, default 200 MB) from a file.
func BenchmarkReadBase(b *testing.B) {
	mb := int64(200)
	if v := os.Getenv("LAYERVISOR_BENCH_MB"); v != "" {
		fmt.Sscan(v, &mb)
	}
	p := filepath.Join(b.TempDir(), "base.tar")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	st, err := synth.Base(f, synth.Options{Seed: 1, Files: 20000, Bytes: mb << 20})
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(st.Bytes)
	b.ResetTimer()
	for range b.N {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		r := wintar.NewReader(f)
		n := 0
		for {
			_, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				b.Fatal(err)
			}
			n++
		}
		f.Close()
		if n != st.Entries {
			b.Fatalf("read %d entries, want %d", n, st.Entries)
		}
	}
	b.ReportMetric(float64(st.Files)*float64(b.N)/b.Elapsed().Seconds(), "files/s")
}
