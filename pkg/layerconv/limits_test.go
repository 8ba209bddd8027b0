package layerconv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// memBound is what converting a hostile layer may allocate.
const memBound = 512 << 20

// hostileTar writes n entries, each under its own top directory and depth
// levels deep below it (one-letter components), as a gzip tar.
func hostileTar(t testing.TB, n, depth int, component string) []byte {
	t.Helper()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	tw := tar.NewWriter(zw)
	deep := strings.Repeat(component+"/", depth)
	for i := range n {
		h := &tar.Header{Name: fmt.Sprintf("t%05d/%sf", i, deep), Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(1700000000, 0)}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return gz.Bytes()
}

// openGzip is an Opener of a gzip tar held in memory, as the store reads
// a layer blob.
func openGzip(b []byte) Opener {
	return func() (io.ReadCloser, error) {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		return zr, nil
	}
}

// convertBounded converts with lim while watching the heap: once it grows
// memBound past where it started, the conversion is cancelled (so a
// regression fails the test instead of exhausting the machine). It returns
// the conversion's error, the peak heap growth and the bytes allocated.
func convertBounded(t *testing.T, open Opener, lim limits) (err error, peak, total uint64) {
	t.Helper()
	f, ferr := os.Create(filepath.Join(t.TempDir(), "layer.vhd"))
	if ferr != nil {
		t.Fatal(ferr)
	}
	defer f.Close()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > base.HeapAlloc {
				peak = max(peak, ms.HeapAlloc-base.HeapAlloc)
			}
			if peak > memBound {
				cancel()
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	_, err = convertLayer(ctx, open, f, true, lim)
	close(done)
	wg.Wait()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return err, peak, ms.TotalAlloc - base.TotalAlloc
}

// wantLimit checks that err is the LimitError of limit, an ErrInvalidLayer
// whose message names the limit.
func wantLimit(t *testing.T, err error, limit string) {
	t.Helper()
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != limit {
		t.Fatalf("want a %s LimitError, got %v", limit, err)
	}
	if !errors.Is(err, ErrInvalidLayer) || !strings.Contains(err.Error(), "layerconv."+limit) {
		t.Fatalf("error is not an ErrInvalidLayer naming %s: %v", limit, err)
	}
}

// The attack of issue #20: a 480 KB gzip layer of 20 000 paths just under
// PATH_MAX, 1 900 levels deep, each under its own top directory, made
// import grow to 24 GB over minutes (tar2ext4 keeps an inode and the full
// path of every directory, and rebuilds every parent path of every entry).
// It must fail on the first entry, with bounded memory.
func TestConvertHostileDeepArchive(t *testing.T) {
	gz := hostileTar(t, 20000, 1900, "a")
	if len(gz) > 1<<20 {
		t.Fatalf("hostile archive is %d bytes, want a small one", len(gz))
	}
	err, peak, total := convertBounded(t, openGzip(gz), defaultLimits)
	t.Logf("%d-byte archive: %v; heap peak +%d MiB, %d MiB allocated", len(gz), err, peak>>20, total>>20)
	if peak > memBound || total > memBound {
		t.Fatalf("conversion grew the heap by %d MiB and allocated %d MiB, want under %d MiB", peak>>20, total>>20, memBound>>20)
	}
	wantLimit(t, err, "MaxPathDepth")
	if !strings.Contains(err.Error(), `"t00000/a/a/`) {
		t.Errorf("error does not name the first entry: %v", err)
	}
}

// Within MaxPathDepth, long unique paths still pile up names (tar2ext4
// keeps the full path of each directory it makes): MaxNameBytes stops them.
func TestConvertHostileLongPaths(t *testing.T) {
	component := strings.Repeat("c", 30)
	gz := hostileTar(t, 4000, MaxPathDepth-2, component) // paths of 3 914 bytes
	err, peak, total := convertBounded(t, openGzip(gz), defaultLimits)
	t.Logf("%d-byte archive: %v; heap peak +%d MiB, %d MiB allocated", len(gz), err, peak>>20, total>>20)
	if peak > memBound {
		t.Fatalf("conversion grew the heap by %d MiB, want under %d MiB", peak>>20, memBound>>20)
	}
	wantLimit(t, err, "MaxNameBytes")
}

// Each cumulative limit stops the layer when crossed (lowered here so the
// layers stay small), in the one-pass conversion and in the two-pass one.
func TestConvertCumulativeLimits(t *testing.T) {
	many := func(n int, dup bool) []entry {
		var es []entry
		if dup { // replacing an entry sends the layer to the two-pass conversion
			es = append(es, entry{name: "x", typ: tar.TypeReg}, entry{name: "x", typ: tar.TypeReg})
		}
		for i := range n {
			es = append(es, entry{name: fmt.Sprintf("d%d/sub/f", i), typ: tar.TypeReg})
		}
		return es
	}
	for _, dup := range []bool{false, true} {
		for _, tc := range []struct {
			limit string
			lim   limits
		}{
			{"MaxEntries", limits{entries: 100, nodes: 1 << 20, nameBytes: 1 << 30}},
			{"MaxTreeNodes", limits{entries: 1 << 20, nodes: 100, nameBytes: 1 << 30}},
			{"MaxNameBytes", limits{entries: 1 << 20, nodes: 1 << 20, nameBytes: 1000}},
		} {
			t.Run(fmt.Sprintf("%s two-pass=%v", tc.limit, dup), func(t *testing.T) {
				conv := func(n int) error {
					f, err := os.Create(filepath.Join(t.TempDir(), "l"))
					if err != nil {
						t.Fatal(err)
					}
					defer f.Close()
					_, err = convertLayer(context.Background(), OpenBytes(mkTar(t, many(n, dup))), f, true, tc.lim)
					return err
				}
				wantLimit(t, conv(200), tc.limit)
				// Well under the limits, the same shape converts.
				if err := conv(20); err != nil {
					t.Fatalf("a layer under the limit: %v", err)
				}
			})
		}
	}
}

// Per-entry limits at their edges: the largest allowed converts (and
// passes e2fsck), one more is refused naming the limit and the entry.
func TestConvertPathLimits(t *testing.T) {
	deep := func(n int) string { return strings.TrimSuffix(strings.Repeat("d/", n), "/") }
	long := func(n int) string { // a path of n bytes, in 200-byte components
		var b strings.Builder
		for b.Len() < n {
			if b.Len() > 0 {
				b.WriteByte('/')
			}
			b.WriteString(strings.Repeat("p", min(200, n-b.Len())))
		}
		return b.String()
	}
	whiteout := func(p string) string {
		i := strings.LastIndexByte(p, '/') + 1
		return p[:i] + ".wh." + p[i:]
	}
	for _, tc := range []struct {
		limit    string
		ok, over entry
	}{
		{"MaxPathDepth", entry{name: deep(MaxPathDepth), typ: tar.TypeReg}, entry{name: deep(MaxPathDepth + 1), typ: tar.TypeReg}},
		{"MaxPathLen", entry{name: long(MaxPathLen), typ: tar.TypeReg}, entry{name: long(MaxPathLen + 1), typ: tar.TypeReg}},
		{"MaxNameLen", entry{name: strings.Repeat("n", MaxNameLen), typ: tar.TypeReg}, entry{name: strings.Repeat("n", MaxNameLen+1), typ: tar.TypeReg}},
		// A whiteout is measured by the name it deletes.
		{"MaxNameLen", entry{name: ".wh." + strings.Repeat("n", MaxNameLen), typ: tar.TypeReg}, entry{name: ".wh." + strings.Repeat("n", MaxNameLen+1), typ: tar.TypeReg}},
		{"MaxPathLen", entry{name: whiteout(long(MaxPathLen)), typ: tar.TypeReg}, entry{name: whiteout(long(MaxPathLen + 1)), typ: tar.TypeReg}},
		{"MaxPathLen", entry{name: "l", typ: tar.TypeSymlink, link: "/" + long(MaxPathLen-1)}, entry{name: "l", typ: tar.TypeSymlink, link: "/" + long(MaxPathLen)}},
	} {
		t.Run(tc.limit, func(t *testing.T) {
			p, err := convert(t, mkTar(t, []entry{tc.ok}))
			if err != nil {
				t.Fatalf("entry at the limit: %v", err)
			}
			if out, err := exec.Command("e2fsck", "-n", "-f", p).CombinedOutput(); err != nil {
				t.Fatalf("e2fsck -n -f: %v\n%s", err, out)
			}
			_, err = convert(t, mkTar(t, []entry{tc.over}))
			wantLimit(t, err, tc.limit)
			if !strings.Contains(err.Error(), clipName(tc.over.name)) {
				t.Errorf("error does not name the entry: %v", err)
			}
		})
	}
}

// A large layer of an ordinary shape converts under the default limits.
func TestConvertRealisticLargeLayer(t *testing.T) {
	const files = 50000
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := range files {
		d := fmt.Sprintf("usr/share/lib%02d/pkg-%04d/sub%d", i/5000, i/50, i%5)
		if i%50 < 5 {
			tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755})
		}
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("%s/file-%06d.txt", d, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: 3}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte("abc"))
	}
	tw.Close()
	p := filepath.Join(t.TempDir(), "layer.vhd")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := Convert(context.Background(), OpenBytes(buf.Bytes()), f)
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != files+files/10 || st.FileBytes != 3*files {
		t.Errorf("stats %+v", st)
	}
	if out, err := exec.Command("e2fsck", "-n", "-f", p).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -n -f: %v\n%s", err, out)
	}
}
