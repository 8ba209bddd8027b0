package guest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/hostrun"
)

// Servers in these tests start container helpers: this binary re-executed.
func TestMain(m *testing.M) {
	hostrun.MaybeInit()
	os.Exit(m.Run())
}

// The pool has a ready spare, a command runs in it (a missing command
// exits 127 from inside the helper), and a new spare replaces it.
func TestHelperPoolKeepsASpare(t *testing.T) {
	testutil.NeedRoot(t)
	var p helperPool
	p.refill()
	p.waitFirst(time.Minute)
	p.mu.Lock()
	first := p.spare
	p.mu.Unlock()
	if first == nil {
		t.Fatal("no spare after refill")
	}
	code, err := p.run(context.Background(), hostrun.Options{Rootfs: t.TempDir(), Args: []string{"no-such-command"}})
	if err != nil || code != hostrun.ExitCommandNotFound {
		t.Fatalf("run in the spare: exit %d, %v", code, err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		p.mu.Lock()
		next := p.spare
		p.mu.Unlock()
		if next != nil && next != first {
			next.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no new spare after the first was used")
		}
	}
}
