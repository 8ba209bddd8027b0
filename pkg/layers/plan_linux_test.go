package layers

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

// An overlay that cannot be mounted fails on the host before any image is
// attached or any state is written.
func TestHostMountTooManyLayersFailsFirst(t *testing.T) {
	testutil.NeedRoot(t)
	h := &Host{StateDir: filepath.Join(t.TempDir(), "mounts")}
	_, err := h.Mount(context.Background(), "many", layerFolders(t, 300))
	if err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("mount of 300 layers: %v", err)
	}
	if h.IsMounted("many") {
		t.Error("a record of the refused container remains")
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), h.StateDir) {
		t.Errorf("something was mounted under %s", h.StateDir)
	}
}
