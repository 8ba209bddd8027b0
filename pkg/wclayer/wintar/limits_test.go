package wintar_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// memBound is how far reading a hostile layer tar may grow the heap, and
// allocBound what it may allocate in all (garbage included: checking each
// prefix of a deep name anew made gigabytes of it per thousand entries).
const (
	memBound   = 512 << 20
	allocBound = 2 << 30
)

// hostileTar is a gzip Windows layer tar of n files, each under its own
// directory of Files/ and depth levels below it.
func hostileTar(t *testing.T, n, depth int, component string) []byte {
	t.Helper()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	tw := tar.NewWriter(zw)
	deep := strings.Repeat(component+"/", depth)
	write := func(name string, typ byte) {
		h := &tar.Header{Name: name, Typeflag: typ, Mode: 0o644, ModTime: time.Unix(1620475200, 0), Format: tar.FormatPAX,
			PAXRecords: map[string]string{"MSWINDOWS.fileattr": "32"}}
		if typ == tar.TypeDir {
			h.PAXRecords["MSWINDOWS.fileattr"] = "16"
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	write("Files", tar.TypeDir)
	for i := range n {
		write(fmt.Sprintf("Files/t%05d/%sf", i, deep), tar.TypeReg)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return gz.Bytes()
}

// readBounded reads the gzip tar with a Reader, stopping (and failing the
// test) once the heap has grown by memBound or allocBound bytes have been
// allocated. It returns the Reader's error (nil if it read everything),
// the peak heap growth and the bytes allocated.
func readBounded(t *testing.T, gz []byte) (error, uint64, uint64) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var mu sync.Mutex
	var peak, total uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			mu.Lock()
			if ms.HeapAlloc > base.HeapAlloc {
				peak = max(peak, ms.HeapAlloc-base.HeapAlloc)
			}
			total = ms.TotalAlloc - base.TotalAlloc
			mu.Unlock()
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	defer func() { close(done); wg.Wait() }()
	r := wintar.NewReader(zr)
	for i := 0; ; i++ {
		_, err := r.Next()
		mu.Lock()
		p, tot := peak, total
		mu.Unlock()
		if p > memBound || tot > allocBound {
			t.Fatalf("after %d entries, reading grew the heap by %d MiB and allocated %d MiB; want under %d and %d MiB",
				i, p>>20, tot>>20, memBound>>20, allocBound>>20)
		}
		if err == io.EOF {
			return nil, p, tot
		}
		if err != nil {
			return err, p, tot
		}
	}
}

// Paths as deep as Windows allows (32 767 UTF-16 units: 16 000 levels),
// each under its own directory: checking an entry must cost its length,
// not its depth times its length, and the names kept are bounded.
func TestReadHostileDeepPaths(t *testing.T) {
	gz := hostileTar(t, 2000, 16000, "a")
	err, peak, total := readBounded(t, gz)
	t.Logf("%d-byte archive: %v; heap peak +%d MiB, %d MiB allocated", len(gz), err, peak>>20, total>>20)
	if !errors.Is(err, wintar.ErrLimit) || !strings.Contains(err.Error(), "wintar.MaxTreeNodes") {
		t.Fatalf("want the MaxTreeNodes limit, got %v", err)
	}
}
