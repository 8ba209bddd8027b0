// Package crashpoint lets crash tests kill the process at a named point, the
// way a power cut or `kill -9` would, to prove that gc recovers from it.
//
// A program arms a point (layervisor's commands arm the one
// LAYERVISOR_CRASH_AT names) and the process sends itself SIGKILL the first
// time it reaches Hit(<name>). Unarmed, Hit does nothing.
package crashpoint

import "sync/atomic"

var point atomic.Pointer[string]

// Arm makes Hit(name) kill the process; "" disarms.
func Arm(name string) { point.Store(&name) }

// Hit kills the process if name is the armed crash point.
func Hit(name string) {
	if p := point.Load(); p != nil && *p != "" && *p == name {
		kill()
	}
}
