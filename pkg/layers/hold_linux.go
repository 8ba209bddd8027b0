package layers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/layervisor/layervisor/internal/crashpoint"
	"github.com/layervisor/layervisor/internal/undo"
)

// Holds: users of layer images other than the containers Mount mounts —
// the containerd snapshotter, whose committed snapshots are layers — take
// the same shared, read-only mounts through Hold, Release and SetHeld, so
// that an image is loop-mounted once on the host whoever uses it. A holder
// has a name (one per user: the snapshotter of a store is one holder,
// whatever number of snapshots it has) and holds each image at most once;
// it counts its own uses and releases an image when its last use goes.
// Holds are in the state file, so they survive the holder's crash (or
// kill -9): the holder says what it holds at its next start (SetHeld),
// and gc keeps them meanwhile.

// Hold takes holder's reference on the read-only mount of the layer image
// (ext4 + VHD footer), mounting it unless it is mounted already, and
// returns where it is mounted. Holding an image held already returns its
// mount point (and mounts it again if a reboot took it away).
func (h *Host) Hold(ctx context.Context, holder, image string) (mountpoint string, err error) {
	if err := validID(holder); err != nil {
		return "", fmt.Errorf("holder: %w", err)
	}
	src, err := filepath.EvalSymlinks(image)
	if err != nil {
		return "", fmt.Errorf("layer image: %w", err)
	}
	r := sharedRef{Source: src, ReadOnly: true}
	lk, st, err := h.open(false)
	if err != nil {
		return "", err
	}
	defer lk.Release()
	if err := st.checkAccess(r, ""); err != nil {
		return "", err
	}
	var u undo.Stack
	defer u.RunUnlessCommitted(ctx, &err)
	if !slices.Contains(st.Holders[holder], src) {
		// The intent comes first, so that a crash leaves a hold the
		// holder's next SetHeld settles, never a mount nobody knows.
		st.Holders[holder] = sortedWith(st.Holders[holder], src)
		h.place(st, src)
		if err := h.save(st); err != nil {
			return "", err
		}
		u.Push("drop the hold", func(context.Context) error {
			st.Holders[holder] = slices.DeleteFunc(st.Holders[holder], func(s string) bool { return s == src })
			if len(st.Holders[holder]) == 0 {
				delete(st.Holders, holder)
			}
			st.prune() // not mounted: ensureMounted failed
			return h.save(st)
		})
		crashpoint.Hit("hold.intent-written")
	}
	mp := st.Mounts[src]
	if err := ensureMounted(r, mp); err != nil {
		return "", fmt.Errorf("layer image %s: %w", image, err)
	}
	u.Commit()
	return mp, nil
}

// Release drops holder's reference on the image's mount, unmounting it if
// nobody else uses it. An image holder does not hold is no error.
func (h *Host) Release(ctx context.Context, holder, image string) error {
	src := resolveGone(image)
	lk, st, err := h.open(false)
	if err != nil {
		return err
	}
	defer lk.Release()
	held := st.Holders[holder]
	if !slices.Contains(held, src) {
		return nil
	}
	if held = slices.DeleteFunc(held, func(s string) bool { return s == src }); len(held) == 0 {
		delete(st.Holders, holder)
	} else {
		st.Holders[holder] = held
	}
	dropped := st.prune()
	if err := h.save(st); err != nil {
		return err
	}
	return unmountDropped(dropped)
}

// SetHeld makes holder hold exactly images (nil: nothing), releasing the
// others it held and mounting whatever is missing — what a holder does at
// its start, after a crash, and at its end. It returns where each image is
// mounted, in the order of images ("" for one that failed, with the error
// joined).
//
// adoptDir, unless empty, is a directory where an older version of the
// holder mounted layer images itself. A mount there that holds (as the
// kernel says) an image of images with no mount yet becomes that image's
// mount instead of a second one: a running container's overlay may use
// it. The other mounts there are unmounted, except those adopted earlier.
func (h *Host) SetHeld(ctx context.Context, holder string, images []string, adoptDir string) ([]string, error) {
	if err := validID(holder); err != nil {
		return nil, fmt.Errorf("holder: %w", err)
	}
	var errs []error
	srcs := make([]string, len(images))
	for i, img := range images {
		src, err := filepath.EvalSymlinks(img)
		if err != nil {
			errs = append(errs, fmt.Errorf("layer image: %w", err))
			continue
		}
		srcs[i] = src
	}
	// As Reconcile does: a holder's start must not be blocked for ever by a
	// state file a power cut or a bad disk left unreadable.
	lk, st, err := h.open(true)
	if err != nil {
		return nil, err
	}
	defer lk.Release()
	var held []string
	for _, src := range srcs {
		if src == "" || slices.Contains(held, src) {
			continue
		}
		if err := st.checkAccess(sharedRef{Source: src, ReadOnly: true}, ""); err != nil {
			errs = append(errs, err)
			continue
		}
		held = append(held, src)
	}
	slices.Sort(held)
	if len(held) == 0 {
		delete(st.Holders, holder)
	} else {
		st.Holders[holder] = held
	}
	var legacy []string // an older version's mounts nobody takes over
	if adoptDir != "" {
		legacy, err = h.adopt(st, held, adoptDir)
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, src := range held {
		h.place(st, src)
	}
	dropped := st.prune()
	if err := h.save(st); err != nil {
		return nil, errors.Join(append(errs, err)...)
	}
	for _, mp := range legacy {
		if err := UnmountAndRemove(mp); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unmountDropped(dropped); err != nil {
		errs = append(errs, err)
	}
	mps := make([]string, len(images))
	for i, src := range srcs {
		if !slices.Contains(held, src) {
			continue
		}
		if err := ensureMounted(sharedRef{Source: src, ReadOnly: true}, st.Mounts[src]); err != nil {
			errs = append(errs, fmt.Errorf("layer image %s: %w", images[i], err))
			continue
		}
		mps[i] = st.Mounts[src]
	}
	return mps, errors.Join(errs...)
}

// adopt records the mounts under dir that hold an image of held with no
// mount yet as those images' mounts, and returns the other mount points
// there (except those recorded earlier), for the caller to unmount once
// the state is saved.
func (h *Host) adopt(st *hostState, held []string, dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("layer mounts of an older version: %w", err)
	}
	recorded := map[string]bool{}
	for _, mp := range st.Mounts {
		recorded[mp] = true
	}
	var errs []error
	var rest []string
	for _, e := range ents {
		mp := filepath.Join(dir, e.Name())
		if recorded[mp] {
			continue
		}
		img, isMount, err := MountedImage(mp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, ok := st.Mounts[img]; isMount && !ok && slices.Contains(held, img) {
			st.Mounts[img] = mp
			recorded[mp] = true
			slog.Info("host layer mounts: adopted a layer mount of an older version", "mount", mp, "image", img)
			continue
		}
		if isMount {
			slog.Info("host layer mounts: unmounting a layer mount of an older version nothing uses", "mount", mp, "image", img)
		}
		rest = append(rest, mp)
	}
	return rest, errors.Join(errs...)
}

// sortedWith returns the sorted list with s added.
func sortedWith(list []string, s string) []string {
	out := append(slices.Clone(list), s)
	slices.Sort(out)
	return out
}

// resolveGone resolves image's symlinks, or, when it is gone, only makes
// it absolute: a released image may have been removed already.
func resolveGone(image string) string {
	if src, err := filepath.EvalSymlinks(image); err == nil {
		return src
	}
	if abs, err := filepath.Abs(image); err == nil {
		return abs
	}
	return image
}
