package uvm

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/testutil"
)

// A saved template appears durably: its state, RAM file and manifest are
// flushed before the rename that puts it in place of a stale one, and the
// templates directory after it.
func TestPublishTemplateFlushes(t *testing.T) {
	root := t.TempDir()
	tdir := TemplatesDir(root)
	key := "0123456789abcdef0123456789abcdef"
	final := filepath.Join(tdir, key)
	if err := os.MkdirAll(filepath.Join(final, "junk"), 0o755); err != nil { // a stale template
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(tdir, ".tmp-"+key+"-")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{tplState, tplRAM} {
		if err := os.WriteFile(filepath.Join(tmp, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	steps := testutil.WatchSync(t, root)
	if err := publishTemplate(tmp, final, Manifest{Format: templateFormat, Key: key}); err != nil {
		t.Fatal(err)
	}
	steps.Published(t, final, tplState, tplRAM, tplManifest)
	var m Manifest
	if err := atomicfile.ReadJSON(filepath.Join(final, tplManifest), &m); err != nil || m.Key != key {
		t.Errorf("manifest %+v %v", m, err)
	}
	if _, err := os.Stat(filepath.Join(final, "junk")); !os.IsNotExist(err) {
		t.Errorf("stale template's content survived: %v", err)
	}
	if ents, _ := os.ReadDir(tdir); len(ents) != 1 {
		t.Errorf("templates dir holds %v", ents)
	}
}
