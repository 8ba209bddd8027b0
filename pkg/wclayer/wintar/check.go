package wintar

import (
	"errors"
	"fmt"
	"strings"
)

// checker holds what a layer tar has said so far, to refuse entries that
// contradict it: names equal but for case, entries below a non-directory,
// streams of missing files and hard links to directories. Reader and Writer
// share it, so the Writer cannot produce a tar the Reader refuses.
type checker struct {
	kinds     map[string]Kind   // upper-cased name → kind
	names     map[string]string // upper-cased name → name as first given
	whiteouts map[string]bool   // upper-cased deleted paths
}

func newChecker() *checker {
	return &checker{kinds: map[string]Kind{}, names: map[string]string{}, whiteouts: map[string]bool{}}
}

// check validates e against the format and the entries before it, and
// records it.
func (c *checker) check(e *Entry) error {
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
	// Nothing may sit below a file or link this layer made.
	for i := 0; i < len(e.Path); i++ {
		if e.Path[i] != '/' {
			continue
		}
		if k, ok := c.kinds[upper(e.Path[:i])]; ok && k != KindDir {
			return fmt.Errorf("parent %q is a %s, not a directory", c.names[upper(e.Path[:i])], k)
		}
	}
	key := upper(e.Path)
	switch e.Kind {
	case KindWhiteout:
		if c.whiteouts[key] {
			return errors.New("path deleted twice")
		}
		// A whiteout deletes from the layers below; after this layer's own
		// entry of that name it would contradict it.
		if prev, ok := c.names[key]; ok {
			return fmt.Errorf("deletes entry %q added earlier in this layer", prev)
		}
		c.whiteouts[key] = true
		return nil
	case KindStream:
		if k := c.kinds[key]; k != KindFile && k != KindDir {
			return fmt.Errorf("stream of %q, which is not a file or directory earlier in this layer", e.Path)
		}
		key += ":" + upper(e.Stream)
	case KindHardlink:
		if err := c.checkHardlink(e, t); err != nil {
			return err
		}
	}
	if prev, ok := c.names[key]; ok {
		if prev == e.Name() {
			return errors.New("duplicate entry")
		}
		return fmt.Errorf("same name as entry %q but for case (Windows names ignore case)", prev)
	}
	c.kinds[key] = e.Kind
	c.names[key] = e.Name()
	return nil
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
	if c.whiteouts[key] {
		return fmt.Errorf("hard link target %q is deleted by this layer", e.Target)
	}
	if k, ok := c.kinds[key]; ok && k != KindFile && k != KindHardlink {
		return fmt.Errorf("hard link target %q is a %s", e.Target, k)
	}
	return nil
}
