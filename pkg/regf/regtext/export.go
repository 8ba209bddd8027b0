// Package regtext reads and writes Windows .reg text files against a
// regf.Hive: Apply merges a .reg file into a hive (keys, [-Key] deletions,
// "v"=- value deletions, every value form), Export prints a key's subtree in
// the dialect `hivexregedit --export` writes.
package regtext

import (
	"bufio"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/layervisor/layervisor/pkg/regf"
)

// Header is the first line of a version 5 .reg file.
const Header = "Windows Registry Editor Version 5.00"

// Export writes k and its subtree as .reg text. Key paths are printed as
// prefix + `\path\below\root` (the root itself is `\`), values sorted by
// name, DWORDs as dword:, everything else as hex(type): bytes, exactly as
// hivexregedit does, so the output round-trips through both tools.
func Export(w io.Writer, k *regf.Key, prefix string) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	bw.WriteString(Header + "\n\n")
	prefix = strings.TrimSuffix(prefix, `\`)
	type item struct {
		k    *regf.Key
		path string // as printed between the brackets
	}
	stack := []item{{k, prefix + `\` + k.Path()}}
	var line []byte
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		bw.WriteString("[" + it.path + "]\n")
		vals := it.k.Values()
		if !slices.IsSortedFunc(vals, valueOrder) {
			vals = slices.SortedStableFunc(slices.Values(vals), valueOrder)
		}
		for _, v := range vals {
			line = appendValue(line[:0], v)
			bw.Write(line)
		}
		bw.WriteByte('\n')
		subs := it.k.Subkeys()
		if !slices.IsSortedFunc(subs, keyOrder) {
			subs = slices.SortedStableFunc(slices.Values(subs), keyOrder)
		}
		sep := `\`
		if it.k.Parent() == nil {
			sep = "" // the root prints as prefix\
		}
		for i := len(subs) - 1; i >= 0; i-- {
			stack = append(stack, item{subs[i], it.path + sep + subs[i].Name()})
		}
	}
	return bw.Flush()
}

// hivexregedit sorts by name byte-wise, not in Windows order.
func valueOrder(a, b *regf.Value) int { return strings.Compare(a.Name, b.Name) }
func keyOrder(a, b *regf.Key) int     { return strings.Compare(a.Name(), b.Name()) }

// appendValue appends one value line: "name"= or @=, then the data.
func appendValue(dst []byte, v *regf.Value) []byte {
	if v.Name == "" {
		dst = append(dst, '@', '=')
	} else {
		dst = append(dst, '"')
		dst = append(dst, escaper.Replace(v.Name)...)
		dst = append(dst, '"', '=')
	}
	if v.Type == regf.RegDWord && len(v.Data) == 4 {
		n, _ := v.Uint()
		dst = append(dst, "dword:"...)
		hexN := strconv.FormatUint(n, 16)
		dst = append(dst, "00000000"[len(hexN):]...)
		dst = append(dst, hexN...)
		return append(dst, '\n')
	}
	dst = append(dst, "hex("...)
	dst = strconv.AppendUint(dst, uint64(v.Type), 16)
	dst = append(dst, "):"...)
	dst = appendHex(dst, v.Data)
	return append(dst, '\n')
}

var escaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`)

const hexDigits = "0123456789abcdef"

func appendHex(dst, data []byte) []byte {
	for i, b := range data {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, hexDigits[b>>4], hexDigits[b&15])
	}
	return dst
}
