package wintar

import (
	"errors"
	"fmt"
	"strings"
)

// Limits on what one layer tar may make a Reader (or Writer) hold: the
// names it has seen, to refuse entries that contradict them. A tar over
// one is refused with an error wrapping ErrLimit and naming the limit.
// Real layers are far below them: a Windows Server Core base layer has a
// few hundred thousand entries, a few tens of MiB of names.
const (
	// MaxEntries bounds the entries of a layer tar.
	MaxEntries = 1 << 21
	// MaxTreeNodes bounds the names the checker keeps: entries, streams,
	// whiteouts and the directories deeper names imply (100–150 bytes
	// each: 2 Mi of them grew the heap by about 300 MiB).
	MaxTreeNodes = 1 << 21
	// MaxNameBytes bounds the bytes of names it keeps: each entry's name
	// and each path component it adds.
	MaxNameBytes = 256 << 20
)

// ErrLimit is wrapped by the error of a layer tar over one of the limits.
var ErrLimit = errors.New("layer tar over a limit")

// checker holds what a layer tar has said so far, to refuse entries that
// contradict it: names equal but for case, entries below a non-directory,
// streams of missing files and hard links to directories. Reader and Writer
// share it, so the Writer cannot produce a tar the Reader refuses. It keeps
// the names as a tree of upper-cased components (one map entry per name),
// so that checking an entry costs the length of its name, not its depth
// times its length.
type checker struct {
	kids    map[edge]int32       // (parent node, upper-cased component) → node
	nodes   []cnode              // node 0 is the layer's root
	streams map[streamKey]string // (file node, upper-cased stream) → entry name as first given
	entries int
	held    int64
	lim     limits
}

// limits are the limits a checker applies (tests lower them).
type limits struct {
	entries, nodes int
	held           int64
}

type edge struct {
	parent int32
	comp   string
}

type streamKey struct {
	node int32
	name string
}

// cnode is a path the layer has named, or a directory a deeper name implies.
type cnode struct {
	name    string // the entry's name as first given (kind != 0)
	kind    Kind   // the entry's kind; 0 for an implied directory
	deleted bool   // a whiteout of this layer deletes the path
}

func newChecker() *checker {
	return &checker{kids: map[edge]int32{}, nodes: []cnode{{}}, streams: map[streamKey]string{},
		lim: limits{entries: MaxEntries, nodes: MaxTreeNodes, held: MaxNameBytes}}
}

// find returns the node of an upper-cased path, or -1.
func (c *checker) find(key string) int32 {
	n := int32(0)
	for rest := key; rest != ""; {
		var comp string
		comp, rest, _ = strings.Cut(rest, "/")
		k, ok := c.kids[edge{n, comp}]
		if !ok {
			return -1
		}
		n = k
	}
	return n
}

// charge counts nodes and bytes the checker is about to keep.
func (c *checker) charge(nodes int, bytes int64) error {
	c.held += bytes
	switch n := len(c.nodes) - 1 + len(c.streams) + nodes; {
	case n > c.lim.nodes:
		return fmt.Errorf("%w: the layer's names reach %d, over wintar.MaxTreeNodes = %d", ErrLimit, n, c.lim.nodes)
	case c.held > c.lim.held:
		return fmt.Errorf("%w: the layer's names reach %d bytes, over wintar.MaxNameBytes = %d", ErrLimit, c.held, c.lim.held)
	}
	return nil
}

// node returns the node of an upper-cased path, making it and its missing
// parents.
func (c *checker) node(key string) (int32, error) {
	n := int32(0)
	for rest := key; rest != ""; {
		var comp string
		comp, rest, _ = strings.Cut(rest, "/")
		k, ok := c.kids[edge{n, comp}]
		if !ok {
			// A copy: the component would otherwise keep the whole name.
			comp = strings.Clone(comp)
			if err := c.charge(1, int64(len(comp))); err != nil {
				return 0, err
			}
			k = int32(len(c.nodes))
			c.nodes = append(c.nodes, cnode{})
			c.kids[edge{n, comp}] = k
		}
		n = k
	}
	return n, nil
}

// check validates e against the format and the entries before it, and
// records it.
func (c *checker) check(e *Entry) error {
	if c.entries++; c.entries > c.lim.entries {
		return fmt.Errorf("%w: entry number %d, over wintar.MaxEntries = %d", ErrLimit, c.entries, c.lim.entries)
	}
	t, depth, err := checkPath(e.Path)
	if err != nil {
		return err
	}
	if err := checkShape(e, t, depth); err != nil {
		return err
	}
	if e.Size < 0 || (e.Size != 0 && e.Kind != KindFile && e.Kind != KindStream) {
		return fmt.Errorf("%s with size %d", e.Kind, e.Size)
	}
	if e.SecurityDescriptor != nil {
		if err := CheckSecurityDescriptor(e.SecurityDescriptor); err != nil {
			return err
		}
	}
	eaNames := map[string]bool{}
	for _, ea := range e.EAs {
		if err := checkEA(ea); err != nil {
			return err
		}
		if eaNames[upper(ea.Name)] {
			return fmt.Errorf("EA %q given twice (EA names ignore case)", ea.Name)
		}
		eaNames[upper(ea.Name)] = true
	}
	key := upper(e.Path)
	// Nothing may sit below a file or link this layer made.
	n := int32(0)
	for rest := key; ; {
		comp, more, found := strings.Cut(rest, "/")
		if !found {
			break
		}
		k, ok := c.kids[edge{n, comp}]
		if !ok {
			break
		}
		if p := c.nodes[k]; p.kind != 0 && p.kind != KindDir {
			return fmt.Errorf("parent %q is a %s, not a directory", p.name, p.kind)
		}
		n, rest = k, more
	}
	var cur cnode // the node at key, if any
	n = c.find(key)
	if n >= 0 {
		cur = c.nodes[n]
	}
	switch e.Kind {
	case KindWhiteout:
		if cur.deleted {
			return errors.New("path deleted twice")
		}
		// A whiteout deletes from the layers below; after this layer's own
		// entry of that name it would contradict it.
		if cur.kind != 0 {
			return fmt.Errorf("deletes entry %q added earlier in this layer", cur.name)
		}
		n, err := c.node(key)
		if err != nil {
			return err
		}
		c.nodes[n].deleted = true
		return nil
	case KindStream:
		if cur.kind != KindFile && cur.kind != KindDir {
			return fmt.Errorf("stream of %q, which is not a file or directory earlier in this layer", e.Path)
		}
		sk := streamKey{n, upper(e.Stream)}
		if prev, ok := c.streams[sk]; ok {
			return sameName(prev, e)
		}
		if err := c.charge(1, int64(len(sk.name)+len(e.Name()))); err != nil {
			return err
		}
		c.streams[sk] = e.Name()
		return nil
	case KindHardlink:
		if err := c.checkHardlink(e, t); err != nil {
			return err
		}
	}
	if cur.kind != 0 {
		return sameName(cur.name, e)
	}
	n, err = c.node(key)
	if err != nil {
		return err
	}
	if err := c.charge(0, int64(len(e.Name()))); err != nil {
		return err
	}
	c.nodes[n].kind, c.nodes[n].name = e.Kind, e.Name()
	return nil
}

// sameName is the error of e, named like the earlier entry prev.
func sameName(prev string, e *Entry) error {
	if prev == e.Name() {
		return errors.New("duplicate entry")
	}
	return fmt.Errorf("same name as entry %q but for case (Windows names ignore case)", prev)
}

// checkShape checks what each tree allows and the kind's own fields.
func checkShape(e *Entry, t tree, depth int) error {
	switch {
	case depth <= 0 && e.Kind != KindDir:
		return fmt.Errorf("a layer root must be a directory, not a %s", e.Kind)
	case t == treeHives && depth == 1 && e.Kind != KindFile:
		return fmt.Errorf("Hives/ holds only hive files, not a %s", e.Kind)
	}
	dir := e.Attributes&AttrDirectory != 0
	switch e.Kind {
	case KindDir:
		if !dir {
			return errors.New("directory without FILE_ATTRIBUTE_DIRECTORY")
		}
	case KindFile, KindHardlink:
		if dir {
			return fmt.Errorf("%s with FILE_ATTRIBUTE_DIRECTORY", e.Kind)
		}
	case KindSymlink, KindJunction:
		return checkLinkTarget(e.Target, e.Kind == KindJunction, depth)
	case KindStream:
		if err := checkComponent(e.Stream); err != nil {
			return fmt.Errorf("stream name: %w", err)
		}
		if e.Attributes != 0 || e.SecurityDescriptor != nil || len(e.EAs) > 0 {
			return errors.New("a stream carries no attributes, security descriptor or EAs of its own")
		}
	case KindWhiteout:
		if _, base := splitDir(e.Path); strings.HasPrefix(base, whiteoutPrefix) {
			return fmt.Errorf("whiteout of %q: opaque and nested whiteouts have no meaning in a Windows layer", base)
		}
	default:
		return fmt.Errorf("unknown entry kind %d", e.Kind)
	}
	return nil
}

// checkHardlink keeps a hard link inside its own tree (Files/ or
// UtilityVM/Files/) and off directories and paths this layer deleted.
func (c *checker) checkHardlink(e *Entry, t tree) error {
	tt, depth, err := checkPath(e.Target)
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", e.Target, err)
	}
	if tt != t || t == treeHives || depth <= 0 {
		return fmt.Errorf("hard link target %q is outside the link's tree", e.Target)
	}
	key := upper(e.Target)
	if key == upper(e.Path) {
		return errors.New("hard link to itself")
	}
	n := c.find(key)
	if n < 0 {
		return nil
	}
	if tn := c.nodes[n]; tn.deleted {
		return fmt.Errorf("hard link target %q is deleted by this layer", e.Target)
	} else if tn.kind != 0 && tn.kind != KindFile && tn.kind != KindHardlink {
		return fmt.Errorf("hard link target %q is a %s", e.Target, tn.kind)
	}
	return nil
}
