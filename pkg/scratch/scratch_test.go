package scratch

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/diskformat"
)

func allocated(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}

func TestTemplateAndClone(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	const size = 128 << 20
	tpl, err := EnsureTemplate(ctx, root, size)
	if err != nil {
		t.Fatal(err)
	}
	// Cached: the second call returns the same file untouched.
	st1, _ := os.Stat(tpl)
	tpl2, err := EnsureTemplate(ctx, root, size)
	if err != nil || tpl2 != tpl {
		t.Fatalf("second EnsureTemplate: %q %v", tpl2, err)
	}
	st2, _ := os.Stat(tpl)
	if !st1.ModTime().Equal(st2.ModTime()) {
		t.Fatal("template re-made")
	}
	if a := allocated(t, tpl); a > 64<<20 {
		t.Fatalf("template of 128 MiB allocates %d bytes; want sparse", a)
	}
	dst := filepath.Join(root, "c1.img")
	m, err := CloneFile(ctx, tpl, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("clone method %s, allocated %d", m, allocated(t, dst))
	if st, _ := os.Stat(dst); st.Size() != size {
		t.Fatalf("clone size %d", st.Size())
	}
	if a := allocated(t, dst); a > allocated(t, tpl)+1<<20 {
		t.Fatalf("clone allocates %d > template %d", a, allocated(t, tpl))
	}
	if out, err := exec.Command("e2fsck", "-n", "-f", dst).CombinedOutput(); err != nil {
		t.Fatalf("clone is not a valid ext4: %v\n%s", err, out)
	}
	a, _ := os.ReadFile(tpl)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("clone content differs from template")
	}
	// dst exists: refuse, keep it.
	if err := Clone(ctx, tpl, dst); err == nil {
		t.Fatal("clone over an existing file succeeded")
	}
	if _, err := os.Stat(dst); err != nil {
		t.Fatal("existing clone removed by failed clone")
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(TemplateDir(root))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp") {
			t.Fatalf("temp file left: %s", e.Name())
		}
	}
}

func TestTemplateBadSize(t *testing.T) {
	root := t.TempDir()
	for _, s := range []int64{0, 1 << 10, 16<<20 + 1} {
		if _, err := EnsureTemplate(context.Background(), root, s); err == nil {
			t.Errorf("size %d accepted", s)
		}
	}
}

func TestCloneMissingTemplate(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "x")
	if err := Clone(context.Background(), "/nonexistent", dst); err == nil {
		t.Fatal("clone of missing template succeeded")
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatal("failed clone left dst behind")
	}
}

// Templates appear durably: each is flushed under a temp name before it is
// linked into place, and the templates directory after.
func TestTemplatesPublishedDurably(t *testing.T) {
	root := t.TempDir()
	steps := testutil.WatchSync(t, root)
	raw, err := EnsureTemplate(context.Background(), root, 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	vhdx, err := EnsureTemplateFormat(context.Background(), root, 32<<20, diskformat.VHDX)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{raw, vhdx} {
		if tmp := steps.Published(t, p); filepath.Dir(tmp) != TemplateDir(root) {
			t.Errorf("%s made from %q, not beside it", p, tmp)
		}
	}
}
