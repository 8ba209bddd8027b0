package wclayer_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/cimfs"
	"github.com/layervisor/layervisor/pkg/wclayer"
	"github.com/layervisor/layervisor/pkg/wclayer/synth"
	"github.com/layervisor/layervisor/pkg/wclayer/uvmlayer"
)

func baseTar(t *testing.T, build int) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := synth.Base(&b, synth.Options{Seed: 3, Files: 40, Bytes: 256 << 10, UtilityVM: true, Build: build}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// A base layer's utility VM is prepared in the import itself: the disks in
// the folder, the edited BCD and SYSTEM in the folder and in the CIM.
func TestImportPreparesUtilityVM(t *testing.T) {
	testutil.NeedTool(t, "mkntfs")
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layers", "base")
	res, err := wclayer.Import(ctx, bytes.NewReader(baseTar(t, 26100)), dir, nil, wclayer.ImportOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if res.UtilityVM == nil || res.UtilityVM.Build != 26100 || !res.Base {
		t.Fatalf("result %+v", res)
	}
	for _, f := range []string{uvmlayer.BaseVHDX, uvmlayer.TemplateVHDX} {
		if !exists(filepath.Join(dir, filepath.FromSlash(f))) {
			t.Errorf("%s missing", f)
		}
	}
	img, err := cimfs.Open(filepath.Join(filepath.Dir(dir), "cim-layers", "base.cim"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, f := range uvmlayer.EditedFiles {
		onDisk, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f)))
		if err != nil {
			t.Fatal(err)
		}
		r, err := img.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		inCIM, _ := io.ReadAll(r)
		if !bytes.Equal(onDisk, inCIM) {
			t.Errorf("%s differs between the folder and the CIM", f)
		}
	}

	// A build of 20348 is left alone unless forced.
	old := filepath.Join(t.TempDir(), "old")
	res, err = wclayer.Import(ctx, bytes.NewReader(baseTar(t, 20348)), old, nil, wclayer.ImportOptions{TempDir: t.TempDir()})
	if err != nil || res.UtilityVM != nil || exists(filepath.Join(old, filepath.FromSlash(uvmlayer.BaseVHDX))) {
		t.Fatalf("20348 without force: %+v %v", res.UtilityVM, err)
	}
	forced := filepath.Join(t.TempDir(), "forced")
	res, err = wclayer.Import(ctx, bytes.NewReader(baseTar(t, 20348)), forced, nil, wclayer.ImportOptions{TempDir: t.TempDir(), ForceUtilityVM: true})
	if err != nil || res.UtilityVM == nil || !exists(filepath.Join(forced, filepath.FromSlash(uvmlayer.TemplateVHDX))) {
		t.Fatalf("20348 forced: %+v %v", res.UtilityVM, err)
	}
}

// A staged import leaves the template for FinishUtilityVM at the final place.
func TestStagedImport(t *testing.T) {
	testutil.NeedTool(t, "mkntfs")
	root := t.TempDir()
	work, final := filepath.Join(root, "tmp", "layer"), filepath.Join(root, "layers", "base")
	cim := filepath.Join(root, "layers", "cim-layers", "base.cim")
	res, err := wclayer.Import(context.Background(), bytes.NewReader(baseTar(t, 26100)), work, nil,
		wclayer.ImportOptions{CIM: cim, TempDir: t.TempDir(), Staged: true})
	if err != nil || res.UtilityVM == nil {
		t.Fatalf("%+v %v", res, err)
	}
	if exists(filepath.Join(work, filepath.FromSlash(uvmlayer.TemplateVHDX))) {
		t.Fatal("staged import made the template in the temporary folder")
	}
	if err := os.Rename(work, final); err != nil {
		t.Fatal(err)
	}
	if err := wclayer.FinishUtilityVM(final); err != nil {
		t.Fatal(err)
	}
	if !exists(filepath.Join(final, filepath.FromSlash(uvmlayer.TemplateVHDX))) {
		t.Error("no template after FinishUtilityVM")
	}
}

func TestCIMRelPath(t *testing.T) {
	for in, want := range map[string]string{
		"/s/wclayers/cim-layers/abc.cim": `cim-layers\abc.cim`,
		"rel/x/../cims/l.cim":            `cims\l.cim`,
	} {
		if got := wclayer.CIMRelPath(in); got != want {
			t.Errorf("CIMRelPath(%q) = %q, want %q", in, got, want)
		}
	}
}
