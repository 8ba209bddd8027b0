package uvm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/pkg/vhdx"
)

// template makes a base VHDX and a differencing SystemTemplate.vhdx on it,
// with data in both, as a layer's UtilityVM folder holds them.
func template(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "UtilityVM")
	os.MkdirAll(dir, 0o755)
	base, err := vhdx.Create(filepath.Join(dir, "SystemTemplateBase.vhdx"), vhdx.CreateOptions{Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	base.WriteAt([]byte("base data"), 0)
	base.Close()
	tpl, err := vhdx.Create(filepath.Join(dir, "SystemTemplate.vhdx"), vhdx.CreateOptions{Parent: filepath.Join(dir, "SystemTemplateBase.vhdx")})
	if err != nil {
		t.Fatal(err)
	}
	tpl.WriteAt([]byte("template"), 1<<20)
	tpl.Close()
	return filepath.Join(dir, "SystemTemplate.vhdx")
}

func TestWindowsSandbox(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	tpl := template(t)
	before, _ := os.ReadFile(tpl)
	u, err := Create(ctx, Config{ID: "win1", Root: root, LongLived: true, WindowsTemplate: tpl})
	if err != nil {
		t.Fatal(err)
	}
	sb := filepath.Join(Dir(root, "win1"), WindowsSandbox)
	d, err := vhdx.Open(sb, vhdx.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("sandbox does not open through its parents: %v", err)
	}
	info := d.Info()
	buf := make([]byte, 9)
	d.ReadAt(buf, 0)
	tail := make([]byte, 8)
	d.ReadAt(tail, 1<<20)
	d.Close()
	if info.Type != vhdx.Differencing || info.VirtualSize != 64<<20 || info.BlockSize != 1<<20 {
		t.Errorf("sandbox %+v", info)
	}
	if string(buf) != "base data" || string(tail) != "template" {
		t.Errorf("sandbox reads %q %q through its chain", buf, tail)
	}
	if st, _ := os.Stat(sb); st.Size() > 8<<20 {
		t.Errorf("sandbox is %d bytes: a copy, not a child", st.Size())
	}
	for _, dir := range []string{"debug", "crash"} {
		if fi, err := os.Stat(filepath.Join(Dir(root, "win1"), dir)); err != nil || !fi.IsDir() {
			t.Errorf("%s dir: %v", dir, err)
		}
	}
	// Booting is refused clearly, and the UVM stays as it was.
	if err := u.Start(ctx); !errors.Is(err, ErrWindowsBoot) || !strings.Contains(err.Error(), "Hyper-V") {
		t.Errorf("start: %v", err)
	}
	if st, err := Load(root, "win1"); err != nil || st.Status != "created" || st.Config.WindowsTemplate != tpl {
		t.Errorf("state after a refused start: %+v %v", st, err)
	}
	// The same id again is refused; an empty one too.
	if _, err := Create(ctx, Config{ID: "win1", Root: root, LongLived: true, WindowsTemplate: tpl}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate id: %v", err)
	}
	if _, err := Create(ctx, Config{ID: "", Root: root, WindowsTemplate: tpl}); err == nil {
		t.Error("empty id accepted")
	}
	// Removal takes the sandbox; the template is untouched throughout.
	if err := u.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(Dir(root, "win1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("uvm dir after rm: %v", err)
	}
	if after, _ := os.ReadFile(tpl); string(after) != string(before) {
		t.Error("the template changed")
	}
}

// A template that is missing or not a differencing disk is refused and
// leaves no UVM directory behind.
func TestWindowsSandboxBadTemplate(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	dyn := filepath.Join(t.TempDir(), "plain.vhdx")
	d, err := vhdx.Create(dyn, vhdx.CreateOptions{Size: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	for _, tc := range []struct{ tpl, want string }{
		{filepath.Join(t.TempDir(), "missing.vhdx"), "missing.vhdx"},
		{dyn, "want the differencing SystemTemplate.vhdx"},
	} {
		_, err := Create(ctx, Config{ID: "w", Root: root, LongLived: true, WindowsTemplate: tc.tpl})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("template %s: %v, want %q", tc.tpl, err, tc.want)
		}
		if _, err := os.Stat(Dir(root, "w")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a refused create left %s", Dir(root, "w"))
		}
	}
}
