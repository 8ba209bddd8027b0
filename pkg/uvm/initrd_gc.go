package uvm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/layervisor/layervisor/internal/atomicfile"
)

// initrdMinAge: an initramfs younger than this may be the one a UVM being
// created right now has just built and not yet recorded; gc leaves it.
const initrdMinAge = 10 * time.Minute

// gcInitrds removes the initramfs files in <root>/boot that no UVM (live
// or kept) and no template names. Each new agent or runtime gets a file of
// its own (DefaultInitrd), so the old ones pile up, ~7 MB each. The newest
// is kept whatever names it (the next UVM most likely wants it), and so is
// any younger than initrdMinAge. A boot directory that is a link is left
// alone.
func gcInitrds(root string, now time.Time) ([]string, error) {
	if fi, err := os.Lstat(filepath.Join(root, "boot")); err != nil || fi.Mode()&os.ModeSymlink != 0 {
		// None, or linked from elsewhere: shared with roots whose UVMs
		// this gc does not see.
		return nil, nil
	}
	files, err := filepath.Glob(filepath.Join(root, "boot", "initrd-*.img"))
	if err != nil || len(files) == 0 {
		return nil, err
	}
	used, err := initrdsInUse(root)
	if err != nil {
		return nil, err
	}
	var newest string
	var newestTime time.Time
	mtimes := map[string]time.Time{}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			continue
		}
		mtimes[f] = fi.ModTime()
		if newest == "" || fi.ModTime().After(newestTime) {
			newest, newestTime = f, fi.ModTime()
		}
	}
	var removed []string
	var errs []error
	for f, mt := range mtimes {
		if f == newest || used[f] || now.Sub(mt) < initrdMinAge {
			continue
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		slog.Info("removed an initramfs no UVM or template uses", "initrd", f)
		removed = append(removed, filepath.Base(f))
	}
	return removed, errors.Join(errs...)
}

// initrdsInUse are the initramfs files the UVMs and templates of root
// name (cleaned paths).
func initrdsInUse(root string) (map[string]bool, error) {
	used := map[string]bool{}
	ents, err := os.ReadDir(filepath.Join(root, "uvms"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range ents {
		if !e.IsDir() || ValidateID(e.Name()) != nil {
			continue
		}
		st, err := Load(root, e.Name())
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue // being created: its initramfs is young (initrdMinAge)
			}
			return nil, fmt.Errorf("initramfs gc: %w", err)
		}
		used[filepath.Clean(st.Config.Initrd)] = true
	}
	tpls, err := filepath.Glob(filepath.Join(TemplatesDir(root), "*", tplManifest))
	if err != nil {
		return nil, err
	}
	for _, p := range tpls {
		var m Manifest
		if err := atomicfile.ReadJSON(p, &m); err != nil {
			continue // gcTemplates removes a template it cannot read
		}
		used[filepath.Clean(m.Initrd)] = true
	}
	return used, nil
}
