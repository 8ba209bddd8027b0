package guest

import (
	"testing"
	"time"

	"github.com/layervisor/layervisor/pkg/agent"
)

// Bad identity arguments are refused before anything in the (here: host)
// kernel is touched; the real op runs in pkg/uvm's template tests.
func TestSetIdentityRefusesBadArgs(t *testing.T) {
	seed := make([]byte, 64)
	now := time.Now().UnixNano()
	for name, a := range map[string]agent.IdentityArgs{
		"short seed":    {Seed: seed[:16], UnixNano: now, Hostname: "vm1"},
		"long seed":     {Seed: make([]byte, 1024), UnixNano: now, Hostname: "vm1"},
		"odd seed":      {Seed: seed[:33], UnixNano: now, Hostname: "vm1"},
		"hostname":      {Seed: seed, UnixNano: now, Hostname: "a b"},
		"empty host":    {Seed: seed, UnixNano: now, Hostname: ""},
		"zero time":     {Seed: seed, Hostname: "vm1"},
		"negative time": {Seed: seed, UnixNano: -1, Hostname: "vm1"},
	} {
		if _, err := setIdentity(a); !agent.IsCode(err, agent.CodeInvalid) {
			t.Errorf("%s: %v, want %s", name, err, agent.CodeInvalid)
		}
	}
}
