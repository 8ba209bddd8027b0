package cristack

import (
	"context"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

// StartTest starts a stack for a test: it needs root and the tools
// scripts/deps.sh builds (without them the test fails in CI and skips
// elsewhere), logs progress with t.Logf, and stops the stack at cleanup,
// failing the test if Stop reports an error or anything is left.
func StartTest(t testing.TB, o Options) *Stack {
	t.Helper()
	testutil.NeedRoot(t)
	if miss := Missing(o); len(miss) > 0 {
		testutil.Unavailable(t, "CRI stack: missing "+strings.Join(miss, ", ")+" (bash scripts/deps.sh)")
	}
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	s, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && !s.stopped {
			t.Logf("containerd log: %s", s.Containerd.Log())
		}
		if err := s.Stop(); err != nil {
			t.Errorf("cristack: stop: %v", err)
		}
		if leaks := s.Leaks(); len(leaks) > 0 {
			t.Errorf("cristack: left after stop: %s", strings.Join(leaks, "; "))
		}
	})
	return s
}
