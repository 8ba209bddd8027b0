package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/imagebuild"
)

// hostileRSS is what `image import` of a hostile layer may make resident.
const hostileRSS = 512 << 20

// TestCLIImportHostileArchive imports the archive of issue #20 (one gzip
// layer of 20 000 paths just under PATH_MAX, 1 900 levels deep, each under
// its own top directory), which made import reach 24 GB and run for
// minutes. The import must fail with an error naming the limit and the
// layer, stay far below hostileRSS (the process is killed past it) and
// leave nothing in the store.
func TestCLIImportHostileArchive(t *testing.T) {
	c := newCLI(t)
	deep := strings.Repeat("a/", 1900)
	var entries []imagebuild.Entry
	var raw bytes.Buffer // the layer's tar as imagebuild writes it, for its diffID
	tw := tar.NewWriter(&raw)
	for i := range 20000 {
		e := imagebuild.File(fmt.Sprintf("t%05d/%sf", i, deep), "", 0o644)
		entries = append(entries, e)
		h := e.Header
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	sum := sha256.Sum256(raw.Bytes())
	chainID := "sha256:" + hex.EncodeToString(sum[:]) // a base layer's chain ID is its diffID
	img := filepath.Join(t.TempDir(), "hostile.tar")
	im := imagebuild.Image{Name: "hostile:1", Layers: []imagebuild.Layer{{Entries: entries, Compression: imagebuild.Gzip}}}
	if err := im.Write(imagebuild.OCITar, img); err != nil {
		t.Fatal(err)
	}
	entries = nil
	if st, err := os.Stat(img); err != nil || st.Size() > 2<<20 {
		t.Fatalf("hostile archive: %v, want a small file (%v)", err, st)
	}

	cmd := exec.Command(c.bin, "--root", c.root, "image", "import", "--name", "hostile:1", img)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The import's peak resident set (VmHWM), watched while it runs: the
	// rusage of a child started with vfork reports the test's own peak.
	// Past hostileRSS the import is killed, so a regression fails the test
	// instead of exhausting the machine.
	done := make(chan struct{})
	watched := make(chan int64, 1)
	go func() {
		var peak int64
		defer func() { watched <- peak }()
		for {
			peak = max(peak, statusBytes(cmd.Process.Pid, "VmHWM:"))
			if peak > hostileRSS {
				cmd.Process.Kill()
				return
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	peak := <-watched
	t.Logf("import: %v, peak RSS seen %d MiB\n%s", err, peak>>20, stderr.String())
	if peak > hostileRSS {
		t.Fatalf("import killed at %d MiB resident, over %d MiB", peak>>20, hostileRSS>>20)
	}
	if err == nil {
		t.Fatalf("hostile import succeeded:\n%s", stdout.String())
	}
	for _, want := range []string{"layerconv.MaxPathDepth", "layer 1", "convert layer " + chainID, `"t00000/a/a/a/`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("error does not say %q:\n%s", want, stderr.String())
		}
	}

	// Nothing is left: no image, no layer, no temp file (the per-layer
	// lock file may stay, as for any import), and gc finds nothing.
	if out := strings.TrimSpace(c.ok("image", "ls", "--json")); out != "[]" {
		t.Errorf("images after a failed import: %s", out)
	}
	if out := strings.TrimSpace(c.ok("layer", "ls", "--json")); out != "[]" {
		t.Errorf("layers after a failed import: %s", out)
	}
	ents, err := os.ReadDir(filepath.Join(c.root, "layers"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != ".locks" {
			t.Errorf("layers/ holds %s after a failed import", e.Name())
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(c.root, "tmp")); len(ents) > 0 {
		t.Errorf("tmp/ holds %v after a failed import", ents)
	}
	var gc struct {
		Store struct{ RemovedLayers, RemovedTemp []string }
	}
	if err := json.Unmarshal([]byte(c.ok("gc", "--json")), &gc); err != nil {
		t.Fatal(err)
	}
	if len(gc.Store.RemovedLayers) > 0 || len(gc.Store.RemovedTemp) > 0 {
		t.Errorf("gc found leftovers of the failed import: %+v", gc.Store)
	}
}

// statusBytes reads a size field ("VmHWM:") of a process's
// /proc/PID/status; 0 once the process is gone.
func statusBytes(pid int, field string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
