package regf

import (
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Dump writes k and its subtree as an indented tree, one line per key and
// per value ("name TYPE data", data as Value.Format shows it). A key's
// class is noted and, in a layered hive, its layer semantics when not
// plain merge.
func (h *Hive) Dump(w io.Writer, k *Key) error {
	ew := &errWriter{w: w}
	dumpKey(ew, k, 0, h.Layered)
	return ew.err
}

func dumpKey(w *errWriter, k *Key, depth int, layered bool) {
	indent := strings.Repeat("  ", depth)
	name := k.Name()
	var notes []string
	if k.Class != "" {
		notes = append(notes, "class "+strconv.Quote(k.Class))
	}
	if layered && (k.Layer != LayerMerge || k.InheritClass) {
		notes = append(notes, k.Layer.String())
		if k.InheritClass {
			notes = append(notes, "inherit-class")
		}
	}
	if len(notes) > 0 {
		name += " (" + strings.Join(notes, ", ") + ")"
	}
	w.printf("%s%s\n", indent, name)
	for _, v := range k.Values() {
		w.printf("%s  %s %s %s\n", indent, DisplayName(v.Name), v.Type, v.Format())
	}
	for _, s := range k.Subkeys() {
		if w.err != nil {
			return
		}
		dumpKey(w, s, depth+1, layered)
	}
}

// errWriter keeps the first write error, so a deep dump is not checked at
// every line.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, a ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, a...)
	}
}

// KeyJSON is the JSON shape of a key, as `layervisor hive dump/get --json`
// prints it; scripts rely on its field names.
type KeyJSON struct {
	Name     string    `json:"name"`
	Path     string    `json:"path"`
	Class    string    `json:"class,omitempty"`
	Modified time.Time `json:"modified"`
	// Layer and InheritClass are set in layered hives only.
	Layer        string      `json:"layer,omitempty"`
	InheritClass bool        `json:"inheritClass,omitempty"`
	Values       []ValueJSON `json:"values"`
	// Subkeys is the whole subtree (deep), SubkeyNames only the names.
	Subkeys     []*KeyJSON `json:"subkeys,omitempty"`
	SubkeyNames []string   `json:"subkeyNames,omitempty"`
	// Hive describes the hive; it comes with the top key only.
	Hive *HiveJSON `json:"hive,omitempty"`
}

// HiveJSON is the JSON shape of a hive's header.
type HiveJSON struct {
	Version  string `json:"version"` // "1.5"
	Layered  bool   `json:"layered"`
	Dirty    bool   `json:"dirty"`
	Replayed int    `json:"replayedLogEntries,omitempty"`
}

// ValueJSON is the JSON shape of a value: Data is the decoded data (a
// string, a list of strings or a number, see Value.Decoded), or the hex
// bytes when the type has no obvious decoding.
type ValueJSON struct {
	Name      string `json:"name"`
	Type      string `json:"type"`
	Data      any    `json:"data"`
	Hex       string `json:"hex"`
	Tombstone bool   `json:"tombstone,omitempty"`
}

// JSON returns the value's JSON shape.
func (v *Value) JSON() ValueJSON {
	out := ValueJSON{Name: v.Name, Type: v.Type.String(), Hex: hex.EncodeToString(v.Data), Tombstone: v.Tombstone}
	if out.Data = v.Decoded(); out.Data == nil {
		out.Data = out.Hex
	}
	return out
}

// KeyJSON returns the JSON shape of k, a key of h, with the hive's header:
// with the whole subtree when deep, else with the names of its subkeys.
func (h *Hive) KeyJSON(k *Key, deep bool) *KeyJSON {
	out := keyJSON(k, deep, h.Layered)
	out.Hive = &HiveJSON{Version: fmt.Sprintf("1.%d", h.MinorVersion), Layered: h.Layered, Dirty: h.Dirty, Replayed: h.Replayed}
	return out
}

func keyJSON(k *Key, deep, layered bool) *KeyJSON {
	out := &KeyJSON{Name: k.Name(), Path: k.Path(), Class: k.Class, Modified: k.Modified, Values: []ValueJSON{}}
	if layered {
		out.Layer, out.InheritClass = k.Layer.String(), k.InheritClass
	}
	for _, v := range k.Values() {
		out.Values = append(out.Values, v.JSON())
	}
	for _, s := range k.Subkeys() {
		if deep {
			out.Subkeys = append(out.Subkeys, keyJSON(s, true, layered))
		} else {
			out.SubkeyNames = append(out.SubkeyNames, s.Name())
		}
	}
	return out
}
