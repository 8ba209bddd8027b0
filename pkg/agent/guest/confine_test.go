package guest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/layervisor/layervisor/pkg/agent"
)

func TestConfine(t *testing.T) {
	root := t.TempDir()
	roots := []string{filepath.Join(root, "run")}
	os.MkdirAll(filepath.Join(root, "run", "c", "x"), 0o755)
	os.Symlink("/etc", filepath.Join(root, "run", "c", "evil"))
	os.Symlink("../..", filepath.Join(root, "run", "c", "up"))
	ok := []string{"/run/c/x", "/run/c/x/new/deeper", "/run"}
	bad := []string{"/etc/passwd", "/run/../etc", "/run/c/evil/passwd", "/run/c/up/x", "relative", "", "/runx/y"}
	for _, p := range ok {
		if _, err := confine(roots, filepath.Join(root, p)); err != nil {
			t.Errorf("%s refused: %v", p, err)
		}
	}
	for _, p := range bad {
		full := p
		if filepath.IsAbs(p) {
			full = root + p
		}
		if p == "/etc/passwd" {
			full = p
		}
		_, err := confine(roots, full)
		if err == nil {
			t.Errorf("%s accepted", p)
			continue
		}
		if !agent.IsCode(err, agent.CodeOutsideRoots) && !agent.IsCode(err, agent.CodeInvalid) {
			t.Errorf("%s: untyped error %v", p, err)
		}
	}
}
