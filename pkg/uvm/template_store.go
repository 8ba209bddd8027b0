package uvm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/flock"
)

var keyRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// TemplateInfo describes a saved template for uvm template ls.
type TemplateInfo struct {
	Key      string    `json:"key"`
	Manifest *Manifest `json:"manifest,omitempty"`
	// DiskBytes is what the template's files take on disk (the RAM file
	// is sparse).
	DiskBytes int64 `json:"diskBytes"`
	// Stale says why the template can no longer be used; "" when usable.
	Stale string `json:"stale,omitempty"`
}

// ListTemplates describes the templates under root.
func ListTemplates(root string) ([]TemplateInfo, error) {
	ents, err := os.ReadDir(TemplatesDir(root))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []TemplateInfo
	for _, e := range ents {
		if !e.IsDir() || !keyRE.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(TemplatesDir(root), e.Name())
		ti := TemplateInfo{Key: e.Name(), DiskBytes: diskUsage(dir)}
		var m Manifest
		if err := atomicfile.ReadJSON(filepath.Join(dir, tplManifest), &m); err != nil {
			ti.Stale = fmt.Sprintf("no readable manifest: %v", err)
		} else {
			ti.Manifest = &m
			ti.Stale = staleReason(root, dir, &m)
		}
		out = append(out, ti)
	}
	return out, nil
}

// staleReason checks a template of root against the files and QEMU it was
// made from; "" when it is still usable.
func staleReason(root, dir string, m *Manifest) string {
	if m.Key != filepath.Base(dir) {
		return fmt.Sprintf("manifest key %s", m.Key)
	}
	inputs := inputCacheFor(root)
	if v, err := inputs.qemuVersion(m.QEMU); err != nil || v != m.QEMUVersion {
		return fmt.Sprintf("QEMU %s is now %q (%v), was %q", m.QEMU, v, err, m.QEMUVersion)
	}
	for _, f := range []struct{ path, hash, what string }{{m.Kernel, m.KernelHash, "kernel"}, {m.Initrd, m.InitrdHash, "initramfs"}} {
		if h, err := inputs.hash(f.path); err != nil || h != f.hash {
			return fmt.Sprintf("%s %s changed or is gone", f.what, f.path)
		}
	}
	want := *m
	if _, err := checkTemplate(dir, want); err != nil {
		return err.Error()
	}
	return ""
}

func diskUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += allocated(fi)
			}
		}
		return nil
	})
	return n
}

// RemoveTemplate removes the template key under root. UVMs restored from
// it keep running (each has its own RAM file); one being saved is waited for.
func RemoveTemplate(root, key string) error {
	if !keyRE.MatchString(key) {
		return fmt.Errorf("template %q: not a template key (32 hex digits; see layervisor uvm template ls)", key)
	}
	dir := filepath.Join(TemplatesDir(root), key)
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("template %s: %w", key, err)
	}
	lk, err := flock.Acquire(filepath.Join(TemplatesDir(root), key+".lock"))
	if err != nil {
		return fmt.Errorf("template %s: %w", key, err)
	}
	defer lk.Remove()
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("template %s: %w", key, err)
	}
	return nil
}

// gcTemplates removes stale templates and the leftovers of saves that
// died half-way; it returns what it removed.
func gcTemplates(root string) ([]string, error) {
	tdir := TemplatesDir(root)
	ents, err := os.ReadDir(tdir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		name := e.Name()
		key := name
		if rest, ok := strings.CutPrefix(name, ".tmp-"); ok {
			key, _, _ = strings.Cut(rest, "-")
		} else if !keyRE.MatchString(name) {
			continue
		}
		lk, ok, err := flock.TryAcquire(filepath.Join(tdir, key+".lock"))
		if err != nil || !ok {
			continue // being saved or removed right now
		}
		why := "a save that did not finish"
		if name == key {
			var m Manifest
			if err := atomicfile.ReadJSON(filepath.Join(tdir, name, tplManifest), &m); err != nil {
				why = fmt.Sprintf("no readable manifest: %v", err)
			} else {
				why = staleReason(root, filepath.Join(tdir, name), &m)
			}
		}
		if why != "" {
			slog.Info("removing UVM template", "template", name, "why", why)
			if err := os.RemoveAll(filepath.Join(tdir, name)); err != nil {
				errs = append(errs, err)
			} else {
				removed = append(removed, name)
			}
		}
		lk.Release()
	}
	return removed, errors.Join(errs...)
}
