// Package regftest builds sample hives and compares hive contents for the
// regf packages' tests.
package regftest

import (
	"encoding/hex"
	"fmt"
	"maps"
	"math/rand"
	"slices"
	"strings"
	"time"

	"github.com/layervisor/layervisor/pkg/regf"
)

// Sample returns a hive exercising what the writer must get right: every
// value type, inline and big data, Latin-1 and UTF-16 names, classes, a
// second security descriptor and enough subkeys for an ri list.
func Sample() *regf.Hive {
	h := regf.New()
	h.Root.Modified = time.Date(2024, 1, 2, 3, 4, 5, 600, time.UTC)
	k := mustKey(h, `Software\Types`)
	k.Class = "TypesClass"
	set(k, "", regf.RegSZ, regf.StringData("default value"))
	set(k, "sz", regf.RegSZ, regf.StringData(`C:\Windows "quoted"`))
	set(k, "expand", regf.RegExpandSZ, regf.StringData(`%SystemRoot%\system32`))
	set(k, "binary", regf.RegBinary, []byte{0, 1, 2, 0xfe, 0xff})
	set(k, "dword", regf.RegDWord, regf.DWordData(0xdeadbeef))
	set(k, "dwordbe", regf.RegDWordBigEndian, []byte{0x12, 0x34, 0x56, 0x78})
	set(k, "link", regf.RegLink, regf.StringData(`\Registry\Machine\Software`))
	set(k, "multi", regf.RegMultiSZ, regf.MultiStringData([]string{"one", "two", "three"}))
	set(k, "reslist", regf.RegResourceList, []byte{1, 2, 3, 4, 5, 6})
	set(k, "fullres", regf.RegFullResourceDescriptor, []byte{9, 9, 9, 9, 9, 9, 9})
	set(k, "resreq", regf.RegResourceRequirementsList, []byte{7, 7, 7, 7, 7, 7, 7, 7})
	set(k, "qword", regf.RegQWord, regf.QWordData(0x0102030405060708))
	set(k, "none", regf.RegNone, []byte{1, 2, 3, 4, 5})
	set(k, "custom", regf.ValueType(0x20001), []byte("custom type data"))
	set(k, "small1", regf.RegBinary, []byte{0xab, 0xcd, 0xef, 0x01})
	set(k, "empty", regf.RegBinary, []byte{})
	set(k, `back\slash "and" quotes`, regf.RegSZ, regf.StringData("x"))
	set(k, "largeinline", regf.RegBinary, bytesOf(16344, 3))
	set(k, "big", regf.RegBinary, bytesOf(16345, 5))
	set(k, "bigger", regf.RegBinary, bytesOf(100_000, 7))

	u := mustKey(h, `Software\Ünïcödé\日本語キー`)
	set(u, "värde", regf.RegSZ, regf.StringData("Grüße 😀"))
	set(u, "名前", regf.RegDWord, regf.DWordData(7))
	u.Class = "クラス"

	sec := mustKey(h, `Software\Secured`)
	sec.Security = AltSecurity()
	set(mustKey(h, `Software\Secured\Child`), "inherits", regf.RegDWord, regf.DWordData(1))

	many := mustKey(h, `Many`)
	for i := 0; i < 1500; i++ {
		c := mustKey(h, fmt.Sprintf(`Many\key%04d`, (i*7919)%1500))
		if i%100 == 0 {
			set(c, "n", regf.RegDWord, regf.DWordData(uint32(i)))
		}
	}
	_ = many
	deep := h.Root
	for i := 0; i < 20; i++ {
		deep = mustKey2(deep, fmt.Sprintf("Level%d", i))
	}
	set(deep, "bottom", regf.RegSZ, regf.StringData("reached"))
	return h
}

// AltSecurity is a second descriptor (owner and group SYSTEM, no DACL).
func AltSecurity() []byte {
	system := []byte{1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0}
	sd := []byte{1, 0, 0x00, 0x80, 20, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	sd = append(sd, system...)
	return append(sd, system...)
}

func bytesOf(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) ^ seed
	}
	return b
}

func mustKey(h *regf.Hive, path string) *regf.Key {
	k, err := h.CreateKey(path)
	if err != nil {
		panic(err)
	}
	return k
}

func mustKey2(k *regf.Key, name string) *regf.Key {
	c, err := k.CreateSubkey(name)
	if err != nil {
		panic(err)
	}
	return c
}

func set(k *regf.Key, name string, t regf.ValueType, data []byte) {
	if err := k.SetValue(name, t, data); err != nil {
		panic(err)
	}
}

// ValueView renders a value for comparison; validators that decode some
// types differently pass their own.
type ValueView func(*regf.Value) string

// Exact renders type and raw data.
func Exact(v *regf.Value) string {
	s := fmt.Sprintf("%s=%s", v.Type, hex.EncodeToString(v.Data))
	if v.Tombstone {
		s += " (tombstone)"
	}
	return s
}

// Flatten maps every key's path (from k, `\`-joined, case kept) to its
// values rendered by view, sorted by name, plus the class.
func Flatten(k *regf.Key, view ValueView) map[string]string {
	out := map[string]string{}
	base := len(k.Path())
	k.Walk(func(c *regf.Key) error {
		var lines []string
		for _, v := range c.Values() {
			lines = append(lines, fmt.Sprintf("  %q %s", v.Name, view(v)))
		}
		slices.Sort(lines)
		p := c.Path()[base:]
		out[strings.TrimPrefix(p, `\`)] = strings.Join(lines, "\n")
		return nil
	})
	return out
}

// FlattenMeta is Flatten plus class, security and layer bits.
func FlattenMeta(k *regf.Key) map[string]string {
	out := Flatten(k, Exact)
	base := len(k.Path())
	k.Walk(func(c *regf.Key) error {
		p := strings.TrimPrefix(c.Path()[base:], `\`)
		out[p] += fmt.Sprintf("\n  class=%q sd=%x layer=%s inherit=%v name=%q", c.Class,
			EffectiveSecurity(c), c.Layer, c.InheritClass, c.Name())
		return nil
	})
	return out
}

// Differences lists up to max differences between two flattened hives.
func Differences(want, got map[string]string, max int) []string {
	var out []string
	keys := slices.AppendSeq(slices.Collect(maps.Keys(want)), maps.Keys(got))
	slices.Sort(keys)
	for _, k := range slices.Compact(keys) {
		w, wok := want[k]
		g, gok := got[k]
		switch {
		case !wok:
			out = append(out, fmt.Sprintf("extra key %q", k))
		case !gok:
			out = append(out, fmt.Sprintf("missing key %q", k))
		case w != g:
			out = append(out, fmt.Sprintf("key %q:\n%s", k, lineDiff(w, g)))
		}
		if len(out) >= max {
			break
		}
	}
	return out
}

// RandomHive builds a small random tree: up to depth levels, names drawn
// from a small alphabet (so case-insensitive collisions happen), random
// values of assorted types and sizes, classes and two descriptors.
func RandomHive(rng *rand.Rand, depth int) *regf.Hive {
	h := regf.New()
	fill(rng, h.Root, depth)
	return h
}

var names = []string{"a", "B", "c", "Dd", "ee", "Ff", "g", "Hh", "ü", "日"}

func fill(rng *rand.Rand, k *regf.Key, depth int) {
	for i, n := 0, rng.Intn(4); i < n; i++ {
		RandomValue(rng, k)
	}
	if rng.Intn(4) == 0 {
		k.Class = names[rng.Intn(len(names))]
	}
	if rng.Intn(6) == 0 {
		k.Security = AltSecurity()
	}
	if depth == 0 {
		return
	}
	for i, n := 0, rng.Intn(4); i < n; i++ {
		c, err := k.CreateSubkey(names[rng.Intn(len(names))] + names[rng.Intn(len(names))])
		if err != nil {
			panic(err)
		}
		fill(rng, c, depth-1)
	}
}

// RandomValue sets a random value on k.
func RandomValue(rng *rand.Rand, k *regf.Key) {
	name := ""
	if rng.Intn(5) > 0 {
		name = names[rng.Intn(len(names))]
	}
	var data []byte
	switch rng.Intn(4) {
	case 0:
		data = bytesOf(rng.Intn(5), byte(rng.Intn(256)))
	case 1:
		data = bytesOf(rng.Intn(100), byte(rng.Intn(256)))
	case 2:
		data = regf.StringData(names[rng.Intn(len(names))])
	default:
		if rng.Intn(10) == 0 {
			data = bytesOf(16344+rng.Intn(3), byte(rng.Intn(256)))
		} else {
			data = regf.DWordData(rng.Uint32())
		}
	}
	types := []regf.ValueType{regf.RegSZ, regf.RegBinary, regf.RegDWord, regf.RegMultiSZ, regf.RegQWord, regf.RegNone}
	if err := k.SetValue(name, types[rng.Intn(len(types))], data); err != nil {
		panic(err)
	}
}

// EffectiveSecurity is the descriptor a key gets when written: its own, or
// its nearest ancestor's, or the default.
func EffectiveSecurity(k *regf.Key) []byte {
	for c := k; c != nil; c = c.Parent() {
		if c.Security != nil {
			return c.Security
		}
	}
	return regf.DefaultSecurity()
}

// lineDiff lists the lines only one side has, shortened.
func lineDiff(want, got string) string {
	short := func(s string) string {
		if len(s) > 160 {
			return s[:160] + "..."
		}
		return s
	}
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var out []string
	for _, l := range w {
		if !slices.Contains(g, l) {
			out = append(out, "- "+short(l))
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			out = append(out, "+ "+short(l))
		}
	}
	return strings.Join(out, "\n")
}
