package regf

import (
	"bytes"
	"fmt"
	"time"
)

// Merge applies a delta (layered) hive onto a base hive and returns the new
// base; neither input is modified. Per key of the delta:
//   - tombstone: the base key and its subtree are dropped;
//   - supersede-tree: the base subtree is replaced by the delta's;
//   - supersede-local: the base key's values and class are replaced, its
//     subkeys are merged;
//   - merge: delta values override base values, tombstone values delete
//     them, other base values stay, subkeys are merged.
//
// Inherit-class keeps the base key's class; a delta key with a security
// descriptor replaces the base key's; the newer last-write time wins.
func Merge(base, delta *Hive) (*Hive, error) {
	if base == nil || base.Root == nil || delta == nil || delta.Root == nil {
		return nil, fmt.Errorf("merge: missing hive or root key")
	}
	root, err := mergeKey(base.Root, delta.Root, DefaultSecurity(), 0)
	if err != nil {
		return nil, err
	}
	if root == nil { // a tombstoned root would leave no hive
		return nil, fmt.Errorf("merge: the delta deletes the root key")
	}
	root.name = base.Root.name // the base names the hive; the delta only changes it
	out := *base
	out.Root = root
	out.Layered = false
	out.Dirty = false
	out.Modified = newer(base.Modified, delta.Modified)
	return &out, nil
}

// mergeKey combines base key b (nil if absent) with delta key d; it returns
// nil when the result is "no key". bSD is the base parent's effective
// security descriptor: keys taken from the base get theirs spelled out, as
// their new parent may carry another.
func mergeKey(b, d *Key, bSD []byte, depth int) (*Key, error) {
	if depth > MaxDepth {
		return nil, fmt.Errorf("merge: keys nested deeper than %d", MaxDepth)
	}
	switch d.Layer {
	case LayerTombstone:
		return nil, nil
	case LayerSupersedeTree:
		b = nil
	}
	out := &Key{name: d.name, Class: d.Class, Modified: d.Modified, Security: d.Security, Flags: d.Flags}
	if b != nil {
		if b.Security != nil {
			bSD = b.Security
		}
		out.Modified = newer(b.Modified, d.Modified)
		if out.Security == nil {
			out.Security = bSD
		}
	}
	if d.InheritClass {
		out.Class = ""
		if b != nil {
			out.Class = b.Class
		}
	}
	// Values keep the base order; overridden ones stay in place, new ones
	// follow.
	if b != nil && d.Layer == LayerMerge {
		for _, v := range b.values {
			switch dv := d.Value(v.Name); {
			case dv == nil:
				out.values = append(out.values, v.Clone())
			case !dv.Tombstone:
				out.values = append(out.values, dv.Clone())
			}
		}
	}
	for _, v := range d.values {
		if !v.Tombstone && (b == nil || d.Layer != LayerMerge || b.Value(v.Name) == nil) {
			out.values = append(out.values, v.Clone())
		}
	}

	var bs []*Key
	if b != nil {
		bs = b.subkeys
	}
	err := out.zipSubkeys(bs, d.subkeys, func(bc, dc *Key) (*Key, error) {
		if dc == nil {
			c := bc.Clone()
			if c.Security == nil {
				c.Security = bSD
			}
			return c, nil
		}
		return mergeKey(bc, dc, bSD, depth+1)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// zipSubkeys walks two subkey lists, both in Windows order, together: fn
// gets each pair of same-named keys, with nil for the side lacking one, and
// the key it returns (if not nil) becomes the next subkey of k.
func (k *Key) zipSubkeys(as, bs []*Key, fn func(a, b *Key) (*Key, error)) error {
	for len(as) > 0 || len(bs) > 0 {
		c := 1
		switch {
		case len(bs) == 0:
			c = -1
		case len(as) > 0:
			c = compareNames(as[0].name, bs[0].name)
		}
		var a, b *Key
		if c <= 0 {
			a, as = as[0], as[1:]
		}
		if c >= 0 {
			b, bs = bs[0], bs[1:]
		}
		child, err := fn(a, b)
		if err != nil {
			return err
		}
		if child != nil {
			child.parent = k
			k.subkeys = append(k.subkeys, child)
		}
	}
	return nil
}

func newer(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Diff returns a delta hive that turns base into target when merged onto it
// with Merge: keys only in the target are added, keys only in the base are
// tombstoned, changed values are set, removed values tombstoned (or, when
// most values went, the key supersedes its values locally), and unchanged
// classes inherited. Unchanged keys are left out.
func Diff(base, target *Hive) (*Hive, error) {
	if base == nil || base.Root == nil || target == nil || target.Root == nil {
		return nil, fmt.Errorf("diff: missing hive or root key")
	}
	root, err := diffKey(base.Root, target.Root, DefaultSecurity(), DefaultSecurity(), 0)
	if err != nil {
		return nil, err
	}
	if root == nil {
		root = &Key{name: target.Root.name, Modified: target.Root.Modified,
			Security: target.Root.Security, Flags: target.Root.Flags, InheritClass: true}
	}
	return &Hive{Root: root, Layered: true, MinorVersion: 6, Modified: target.Modified,
		FileName: target.FileName}, nil
}

// diffKey returns the delta key for base key b and target key t, or nil if
// nothing differs.
// bSD and tSD are the parents' effective security descriptors (a key
// without its own inherits its parent's).
func diffKey(b, t *Key, bSD, tSD []byte, depth int) (*Key, error) {
	if depth > MaxDepth {
		return nil, fmt.Errorf("diff: keys nested deeper than %d", MaxDepth)
	}
	if b.Security != nil {
		bSD = b.Security
	}
	if t.Security != nil {
		tSD = t.Security
	}
	out := &Key{name: t.name, Modified: t.Modified, Security: tSD, Flags: t.Flags, Class: t.Class}
	changed := b.name != t.name || b.Flags != t.Flags || !bytes.Equal(bSD, tSD)
	if b.Class == t.Class {
		out.Class, out.InheritClass = "", true
	} else {
		changed = true
	}

	var gone []*Value // tombstones for the values the target lacks
	for _, v := range b.values {
		if t.Value(v.Name) == nil {
			gone = append(gone, &Value{Name: v.Name, Tombstone: true})
		}
	}
	if len(gone) > len(t.values) {
		// Cheaper to restate the key's values than to tombstone most.
		out.Layer = LayerSupersedeLocal
		for _, v := range t.values {
			out.values = append(out.values, v.Clone())
		}
		changed = true
	} else {
		for _, v := range t.values {
			if bv := b.Value(v.Name); bv == nil || !bv.Equal(v) {
				out.values = append(out.values, v.Clone())
			}
		}
		out.values = append(out.values, gone...)
	}

	err := out.zipSubkeys(b.subkeys, t.subkeys, func(bc, tc *Key) (*Key, error) {
		switch {
		case tc == nil: // gone from the target
			return &Key{name: bc.name, Layer: LayerTombstone, Modified: t.Modified, Security: bc.Security}, nil
		case bc == nil: // new in the target
			c := tc.Clone()
			c.Layer = LayerSupersedeTree
			if c.Security == nil {
				c.Security = tSD
			}
			return c, nil
		}
		return diffKey(bc, tc, bSD, tSD, depth+1)
	})
	if err != nil {
		return nil, err
	}
	if !changed && len(out.values) == 0 && len(out.subkeys) == 0 {
		return nil, nil
	}
	return out, nil
}
