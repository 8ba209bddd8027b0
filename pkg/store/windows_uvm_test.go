package store_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/store"
	"github.com/layervisor/layervisor/pkg/vhdx"
	"github.com/layervisor/layervisor/pkg/wclayer/synth"
	"github.com/layervisor/layervisor/pkg/wclayer/uvmlayer"
)

// The base layer's SystemTemplate.vhdx names its parent by the layer's
// final place, not the temporary folder the import built it in; it is
// made once the folder is in place, and layer.json after it.
func TestImportWindowsTemplateParent(t *testing.T) {
	testutil.NeedTool(t, "mkntfs")
	ctx := context.Background()
	root := t.TempDir()
	s, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	o := synth.Options{Seed: 21, Files: 40, Bytes: 256 << 10, UtilityVM: true, Build: 26100}
	path := wcImage(t, "winuvm:1", wcLayer(t, func(w io.Writer) (synth.Stats, error) { return synth.Base(w, o) }))
	steps := testutil.WatchSync(t, root)
	res, err := s.Import(ctx, path, store.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := s.WindowsLayerDir(res.Image.ChainIDs[0])
	tmpl, err := s.UtilityVMTemplate("winuvm:1")
	if err != nil {
		t.Fatal(err)
	}
	d, err := vhdx.Open(tmpl, vhdx.OpenOptions{ReadOnly: true, NoParent: true})
	if err != nil {
		t.Fatal(err)
	}
	loc := d.Info().ParentLocator
	d.Close()
	want := filepath.Join(dir, filepath.FromSlash(uvmlayer.BaseVHDX))
	if loc["absolute_win32_path"] != want || loc["relative_path"] != `.\SystemTemplateBase.vhdx` {
		t.Errorf("parent locator %v, want absolute_win32_path %s", loc, want)
	}
	// Opened by its locator alone (relative path moved aside), it finds the base.
	d, err = vhdx.Open(tmpl, vhdx.OpenOptions{ReadOnly: true, ParentPath: loc["absolute_win32_path"]})
	if err != nil {
		t.Fatalf("template with its recorded parent: %v", err)
	}
	d.Close()

	// Published durably: the folder's files flushed before its rename, the
	// template made in place after it, layer.json last.
	tmp := steps.Published(t, dir, "Hives/SYSTEM_BASE", filepath.FromSlash(uvmlayer.BaseVHDX), filepath.FromSlash(uvmlayer.SystemHive))
	if !strings.HasPrefix(tmp, filepath.Join(root, "tmp")+string(filepath.Separator)) {
		t.Errorf("layer folder published from %q, not from tmp/", tmp)
	}
	steps.Published(t, tmpl)
	steps.Published(t, filepath.Join(dir, "layer.json"))
	order := map[string]int{}
	for i, op := range steps.Ops() {
		if op.Kind == atomicfile.OpRename || op.Kind == atomicfile.OpLink {
			order[op.To] = i
		}
	}
	if !(order[dir] < order[tmpl] && order[tmpl] < order[filepath.Join(dir, "layer.json")]) {
		t.Errorf("publish order: folder %d, template %d, layer.json %d", order[dir], order[tmpl], order[filepath.Join(dir, "layer.json")])
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "tmp")); len(ents) != 0 {
		t.Errorf("tmp after the import: %v", ents)
	}
}
