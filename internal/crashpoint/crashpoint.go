// Package crashpoint lets crash tests kill the process at a named point, the
// way a power cut or `kill -9` would, to prove that gc recovers from it.
//
// Set LAYERVISOR_CRASH_AT=<name> and the process sends itself SIGKILL the
// first time it reaches Hit(<name>). Without the variable Hit does nothing.
package crashpoint

import (
	"os"
	"sync"
)

var (
	once  sync.Once
	point string
)

// Hit kills the process if name is the configured crash point.
func Hit(name string) {
	once.Do(func() { point = os.Getenv("LAYERVISOR_CRASH_AT") })
	if point != "" && point == name {
		kill()
	}
}
