// Package scratch makes containers' writable scratch disks: one ext4
// template per size, formatted once and cached, and per-container clones of
// it that never copy the whole template.
package scratch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/pkg/vhdx"
)

// DefaultSize is the virtual size of a scratch disk when none is given.
const DefaultSize int64 = 20 << 30

// MinSize is the smallest scratch mkfs.ext4 formats sensibly.
const MinSize int64 = 16 << 20

// Method says how a clone was made.
type Method string

const (
	MethodReflink    Method = "reflink"     // FICLONE: shares every extent, O(1)
	MethodSparseCopy Method = "sparse-copy" // copies only allocated extents
)

// LockFile, in TemplateDir, is held while a template is being made.
const LockFile = ".lock"

// TemplateDir is where templates are cached under a state root.
func TemplateDir(root string) string { return filepath.Join(root, "scratch", "templates") }

// EnsureTemplate returns the path of the ext4 template of the given size
// under root, formatting it first if it does not exist yet. The template
// appears atomically: a crash leaves at most a temp file that gc removes.
func EnsureTemplate(ctx context.Context, root string, size int64) (string, error) {
	if size < MinSize {
		return "", fmt.Errorf("scratch size %d is below the minimum of %d bytes", size, MinSize)
	}
	if size%4096 != 0 {
		return "", fmt.Errorf("scratch size %d is not a multiple of 4096", size)
	}
	path := filepath.Join(TemplateDir(root), "ext4-"+strconv.FormatInt(size, 10)+".img")
	err := cached(path, func() error {
		return atomicfile.Create(path, 0o600, func(f *os.File) error {
			if err := f.Truncate(size); err != nil {
				return fmt.Errorf("size %d: %w", size, err)
			}
			// Lazy init keeps the image sparse: inode tables and journal are
			// not zeroed, so a clone copies a few MiB whatever the size.
			cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-L", "scratch",
				"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", f.Name())
			if out, err := cmd.CombinedOutput(); err != nil {
				if errors.Is(err, exec.ErrNotFound) {
					return fmt.Errorf("mkfs.ext4 not found: install e2fsprogs (scripts/deps.sh): %w", err)
				}
				return fmt.Errorf("mkfs.ext4: %w: %s", err, out)
			}
			return nil
		})
	})
	if err != nil {
		return "", fmt.Errorf("scratch template: %w", err)
	}
	return path, nil
}

// cached makes a template at path with build unless it exists. One maker at
// a time across processes; gc takes the same lock before it removes temp
// files here. build must create path atomically (a crash leaves at most a
// ".tmp-" file that gc removes).
func cached(path string, build func() error) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	lk, err := flock.Acquire(filepath.Join(dir, LockFile))
	if err != nil {
		return err
	}
	defer lk.Release()
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := build(); err != nil {
		return err
	}
	slog.Info("made scratch template", "path", path)
	return nil
}

// Clone makes dst a copy of the template src without copying it in full.
// dst must not exist; on failure nothing is left at dst.
func Clone(ctx context.Context, src, dst string) error {
	_, err := CloneFile(ctx, src, dst)
	return err
}

// CloneFile is Clone that also reports the method used.
func CloneFile(ctx context.Context, src, dst string) (m Method, err error) {
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("clone scratch: %w", err)
	}
	defer func() {
		cerr := out.Close()
		if err == nil && cerr != nil {
			err = fmt.Errorf("clone scratch %s: %w", dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if m, err = CloneInto(ctx, src, out); err != nil {
		return "", err
	}
	if filepath.Ext(dst) == ".vhdx" {
		if err := vhdx.Reidentify(dst); err != nil {
			return "", fmt.Errorf("clone scratch %s: %w", dst, err)
		}
	}
	return m, nil
}

// CloneInto makes the open file out a copy of src, of src's size, by
// reflink or else a sparse copy. out may be mapped by another process
// meanwhile (a UVM's RAM file, which QEMU maps while it starts).
func CloneInto(ctx context.Context, src string, out *os.File) (Method, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("clone %s: %w", src, err)
	}
	defer in.Close()
	if reflink(in, out) == nil {
		return MethodReflink, nil
	}
	if err := sparseCopy(ctx, in, out); err != nil {
		return "", fmt.Errorf("clone %s to %s: %w", src, out.Name(), err)
	}
	return MethodSparseCopy, nil
}
