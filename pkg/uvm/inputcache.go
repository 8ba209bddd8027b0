package uvm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/layervisor/layervisor/internal/atomicfile"
)

// inputCache keeps what a template key is made of (SHA-256 of the kernel
// and initramfs, QEMU's version) across processes, in
// <root>/templates/inputs.json, so that starting a UVM does not hash
// 18 MB and run `qemu --version` (~40 ms here) every time. An entry is
// keyed by the file's identity (fileIdentity: device, inode, size, mtime
// and ctime; ctime moves on any change and cannot be set back), so a
// changed file misses. The file is only a cache: unreadable means empty,
// and concurrent writers may lose each other's entries.
type inputCache struct {
	file string
	mu   sync.Mutex
	m    map[string]string
}

var inputCaches sync.Map // cache file -> *inputCache

func inputCacheFor(root string) *inputCache {
	file := filepath.Join(TemplatesDir(root), "inputs.json")
	c, _ := inputCaches.LoadOrStore(file, &inputCache{file: file})
	return c.(*inputCache)
}

// qemuVersion is the first line of `qemu --version`.
func (c *inputCache) qemuVersion(qemu string) (string, error) {
	return c.get("qemu-version", qemu, func() (string, error) { return runQEMUVersion(qemu) })
}

// hash is the file's SHA-256.
func (c *inputCache) hash(p string) (string, error) {
	return c.get("sha256", p, func() (string, error) { return hashFile(p) })
}

// get returns kind's value for the file at p, computing it on a miss.
func (c *inputCache) get(kind, p string, compute func() (string, error)) (string, error) {
	id, err := fileIdentity(p)
	if err != nil {
		return "", err
	}
	key := kind + " " + p + " " + id
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]string{}
		if err := atomicfile.ReadJSON(c.file, &c.m); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.m = map[string]string{}
		}
	}
	v, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return v, nil
	}
	if v, err = compute(); err != nil {
		return "", err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.m {
		// One entry per kind and path: older identities are dead.
		if strings.HasPrefix(k, kind+" "+p+" ") {
			delete(c.m, k)
		}
	}
	c.m[key] = v
	if err := os.MkdirAll(filepath.Dir(c.file), 0o755); err == nil {
		_ = atomicfile.WriteJSON(c.file, c.m, false) // a cache: failing to keep it only costs time
	}
	return v, nil
}
