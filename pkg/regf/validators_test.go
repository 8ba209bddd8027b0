package regf_test

// Independent validators read what we write, and we read what they write.
// Each validator's output is parsed back into key/value sets and compared
// with ours structurally.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/internal/latin1"
	"github.com/layervisor/layervisor/pkg/regf/internal/regftest"
	"github.com/layervisor/layervisor/pkg/regf/regtext"
)

func writeHive(t *testing.T, h *regf.Hive) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hive")
	if err := h.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func compare(t *testing.T, who string, want, got map[string]string) {
	t.Helper()
	if d := regftest.Differences(want, got, 5); len(d) > 0 {
		t.Fatalf("%s reads the hive differently:\n%s", who, strings.Join(d, "\n"))
	}
}

// fromReg applies .reg text to an empty hive.
func fromReg(t *testing.T, text []byte, prefix string) *regf.Hive {
	t.Helper()
	h := regf.New()
	if err := regtext.Apply(h, bytes.NewReader(text), regtext.Options{Prefix: prefix}); err != nil {
		t.Fatalf("parsing exported .reg: %v", err)
	}
	return h
}

func TestHivexregeditReadsOurHive(t *testing.T) {
	h := regftest.Sample()
	out := testutil.Run(t, "hivexregedit", "--export", writeHive(t, h), `\`)
	compare(t, "hivexregedit", regftest.Flatten(h.Root, regftest.Exact), regftest.Flatten(fromReg(t, out, "").Root, regftest.Exact))
	// Our exporter prints the same text.
	var ours bytes.Buffer
	if err := regtext.Export(&ours, h.Root, ""); err != nil {
		t.Fatal(err)
	}
	// Perl prints names without wide characters as Latin-1 bytes; we
	// always write UTF-8.
	if theirs := latin1.DecodeLines(out); ours.String() != theirs {
		t.Errorf("regtext.Export differs from hivexregedit --export:\n%s", firstDiff(ours.String(), theirs))
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) && i < len(bl); i++ {
		if al[i] != bl[i] {
			return fmt.Sprintf("line %d:\nours:   %.200s\ntheirs: %.200s", i+1, al[i], bl[i])
		}
	}
	return fmt.Sprintf("lengths %d vs %d lines", len(al), len(bl))
}

// hivexml's view of a value: strings decoded, integers in decimal, lists
// as their strings, anything else base64.
func hivexmlView(v *regf.Value) string {
	switch v.Type {
	case regf.RegSZ, regf.RegExpandSZ, regf.RegLink:
		s, _ := v.Text()
		return "text:" + s
	case regf.RegDWord, regf.RegDWordBigEndian:
		if n, err := v.Uint(); err == nil {
			return "int:" + strconv.Itoa(int(int32(n)))
		}
	case regf.RegQWord:
		if n, err := v.Uint(); err == nil {
			return "int:" + strconv.FormatInt(int64(n), 10)
		}
	case regf.RegMultiSZ:
		ss, _ := v.Strings()
		return "list:" + strings.Join(ss, "|")
	}
	return "b64:" + base64.StdEncoding.EncodeToString(v.Data)
}

type xmlNode struct {
	Name   string     `xml:"name,attr"`
	Root   string     `xml:"root,attr"`
	Values []xmlValue `xml:"value"`
	Nodes  []xmlNode  `xml:"node"`
}

type xmlValue struct {
	Type    string   `xml:"type,attr"`
	Key     string   `xml:"key,attr"`
	Value   string   `xml:"value,attr"`
	Strings []string `xml:"string"`
}

func TestHivexmlReadsOurHive(t *testing.T) {
	h := regftest.Sample()
	out := testutil.Run(t, "hivexml", writeHive(t, h))
	var doc struct {
		Node xmlNode `xml:"node"`
	}
	if err := xml.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	var walk func(n xmlNode, path string)
	walk = func(n xmlNode, path string) {
		var lines []string
		for _, v := range n.Values {
			var s string
			switch v.Type {
			case "string", "expand", "link":
				s = "text:" + v.Value
			case "int32", "int64":
				s = "int:" + v.Value
			case "string-list":
				for len(v.Strings) > 0 && v.Strings[len(v.Strings)-1] == "" {
					v.Strings = v.Strings[:len(v.Strings)-1]
				}
				s = "list:" + strings.Join(v.Strings, "|")
			default:
				s = "b64:" + strings.Join(strings.Fields(v.Value), "")
			}
			lines = append(lines, fmt.Sprintf("  %q %s", v.Key, s))
		}
		slices.Sort(lines)
		got[path] = strings.Join(lines, "\n")
		for _, c := range n.Nodes {
			p := c.Name
			if path != "" {
				p = path + `\` + c.Name
			}
			walk(c, p)
		}
	}
	if doc.Node.Root != "1" || doc.Node.Name != h.Root.Name() {
		t.Fatalf("hivexml root %q", doc.Node.Name)
	}
	walk(doc.Node, "")
	compare(t, "hivexml", regftest.Flatten(h.Root, hivexmlView), got)
}

// regfexport (libregf) prints names, types and sizes for every value and a
// hex dump for most. Its release here shows resident data shorter than four
// bytes as zeros, so for those only the size is compared.
func regfexportView(v *regf.Value) string {
	typ := v.Type.String()
	switch v.Type {
	case regf.RegDWord:
		typ = "REG_DWORD_LITTLE_ENDIAN"
	case regf.RegQWord:
		typ = "REG_QWORD_LITTLE_ENDIAN"
	}
	if int(v.Type) > 11 {
		typ = fmt.Sprintf("unknown: 0x%08x", uint32(v.Type))
	}
	s := fmt.Sprintf("%s size=%d", typ, len(v.Data))
	if dumped(v) {
		s += fmt.Sprintf(" data=%x", v.Data)
	}
	return s
}

// dumped says whether regfexport prints the data as a hex dump.
func dumped(v *regf.Value) bool {
	switch v.Type {
	case regf.RegSZ, regf.RegExpandSZ, regf.RegDWord, regf.RegDWordBigEndian, regf.RegQWord:
		return false
	}
	return len(v.Data) >= 4
}

var hexLine = regexp.MustCompile(`^[0-9a-f]{8}: ((?:[0-9a-f]{2} {1,2}){1,16})`)

func TestRegfexportReadsOurHive(t *testing.T) {
	h := regftest.Sample()
	out := testutil.Run(t, "regfexport", writeHive(t, h))
	got := map[string]string{}
	var path string
	var lines []string
	var cur *strings.Builder
	var dump []byte
	flushValue := func() {
		if cur != nil {
			if dump != nil {
				fmt.Fprintf(cur, " data=%x", dump)
			}
			lines = append(lines, cur.String())
		}
		cur, dump = nil, nil
	}
	flushKey := func() {
		flushValue()
		if path != "" || lines != nil {
			slices.Sort(lines)
			got[path] = strings.Join(lines, "\n")
		}
		lines = nil
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	var name, typ string
	inDump := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "Key path: "):
			flushKey()
			p := strings.TrimPrefix(line, "Key path: ")
			p = strings.TrimPrefix(strings.TrimPrefix(p, h.Root.Name()), `\`)
			path = p
			got[path] = ""
		case strings.HasPrefix(line, "Class name: "):
			lines = append(lines, "  class="+strings.TrimPrefix(line, "Class name: "))
		case strings.HasPrefix(line, "Value: "):
			flushValue()
			name = strings.SplitN(strings.TrimPrefix(line, "Value: "), " ", 2)[1]
			if name == "(default)" {
				name = ""
			}
			inDump = false
		case strings.HasPrefix(line, "Type: "):
			typ = line[len("Type: "):]
			if i := strings.LastIndex(typ, "("); i >= 0 {
				typ = strings.TrimSuffix(typ[i+1:], ")")
			}
		case strings.HasPrefix(line, "Data size: "):
			cur = &strings.Builder{}
			fmt.Fprintf(cur, "  %q %s size=%s", name, typ, line[len("Data size: "):])
		case line == "Data:":
			inDump = true
		case inDump && hexLine.MatchString(line):
			for _, f := range strings.Fields(hexLine.FindStringSubmatch(line)[1]) {
				b, _ := strconv.ParseUint(f, 16, 8)
				dump = append(dump, byte(b))
			}
		default:
			inDump = false
		}
	}
	flushKey()
	want := regftest.Flatten(h.Root, regfexportView)
	h.Root.Walk(func(k *regf.Key) error {
		if k.Class != "" {
			lines := strings.Split(want[k.Path()], "\n")
			if lines[0] == "" {
				lines = nil
			}
			lines = append(lines, "  class="+k.Class)
			slices.Sort(lines)
			want[k.Path()] = strings.Join(lines, "\n")
		}
		return nil
	})
	if _, ok := got[""]; !ok {
		got[""] = "" // the root has no "Key path" line of its own when empty
	}
	// regfexport names the default value "(default)": a real value of that
	// name would be ambiguous; the sample has none.
	compare(t, "regfexport", want, got)
}

// chntpw's reged prints REG_SZ as "text", DWORDs as dword:, and the rest as
// hex; it drops the newline after an empty hex value and does not know big
// data (db) records, so the sample used with it has neither.
func regedView(v *regf.Value) string {
	if v.Type == regf.RegSZ {
		s, _ := v.Text()
		return "text:" + s
	}
	return regftest.Exact(v)
}

func TestRegedReadsOurHive(t *testing.T) {
	h := regftest.Sample()
	// reged prints REG_SZ data as 8-bit text: keep string values ASCII.
	h.Lookup(`Software\Ünïcödé\日本語キー`).SetValue("värde", regf.RegSZ, regf.StringData("ascii only"))
	h.Root.Walk(func(k *regf.Key) error {
		for _, v := range k.Values() {
			if len(v.Data) == 0 && v.Type != regf.RegSZ || len(v.Data) > 16344 {
				k.DeleteValue(v.Name)
			}
		}
		return nil
	})
	out := filepath.Join(t.TempDir(), "out.reg")
	testutil.Run(t, "reged", "-x", writeHive(t, h), `HKEY_LOCAL_MACHINE\TEST`, `\`, out)
	text, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got := fromReg(t, text, `HKEY_LOCAL_MACHINE\TEST`)
	// reged spells non-ASCII key names in its own 8-bit way; compare ASCII
	// parts of the tree only.
	h.DeleteKey(`Software\Ünïcödé`)
	for _, k := range got.Lookup(`Software`).Subkeys() {
		if k.Name() != "Types" && k.Name() != "Secured" {
			got.Lookup(`Software`).DeleteSubkey(k.Name())
		}
	}
	compare(t, "reged", regftest.Flatten(h.Root, regedView), regftest.Flatten(got.Root, regedView))
}

// TestWeReadHivexEdits has hivexsh add keys and values of every type to a
// hive we wrote, then reads hivex's result.
func TestWeReadHivexEdits(t *testing.T) {
	h := regf.New()
	h.CreateKey(`Existing`)
	p := writeHive(t, h)
	script := `cd \Existing
add Added
cd Added
setval 6
@
string:default text
str
expandstring:%PATH%
num
dword:0x12345678
big
hex:11:08,07,06,05,04,03,02,01
bin
hex:3:de,ad,be,ef,00,01
multi
hex:7:61,00,00,00,62,00,00,00,00,00
cd \
add Second
commit
`
	testutil.NeedTool(t, "hivexsh")
	cmd := exec.Command("hivexsh", "-w", p)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hivexsh: %v\n%s", err, out)
	}
	got, err := regf.ReadFile(p)
	if err != nil {
		t.Fatalf("reading hivex's edit: %v", err)
	}
	want := regf.New()
	k, _ := want.CreateKey(`Existing\Added`)
	k.SetValue("", regf.RegSZ, regf.StringData("default text"))
	k.SetValue("str", regf.RegExpandSZ, regf.StringData("%PATH%"))
	k.SetValue("num", regf.RegDWord, regf.DWordData(0x12345678))
	k.SetValue("big", regf.RegQWord, regf.QWordData(0x0102030405060708))
	k.SetValue("bin", regf.RegBinary, []byte{0xde, 0xad, 0xbe, 0xef, 0, 1})
	k.SetValue("multi", regf.RegMultiSZ, regf.MultiStringData([]string{"a", "b"}))
	want.CreateKey(`Second`)
	compare(t, "hivexsh edit", regftest.Flatten(want.Root, regftest.Exact), regftest.Flatten(got.Root, regftest.Exact))
	// And what we write back from it, hivex reads the same.
	out := testutil.Run(t, "hivexregedit", "--export", writeHive(t, got), `\`)
	compare(t, "hivexregedit after our rewrite", regftest.Flatten(want.Root, regftest.Exact), regftest.Flatten(fromReg(t, out, "").Root, regftest.Exact))
}

// TestHivexMergeMatchesOurImport merges one .reg file with hivexregedit
// and with regtext.Apply; both hives must read the same.
func TestHivexMergeMatchesOurImport(t *testing.T) {
	reg := `Windows Registry Editor Version 5.00

[\Software]

[\Software\Vendor]
"Name"="Vendor \"Q\" Ltd"
@="the default"
"Count"=dword:0000002a
"Blob"=hex:01,02,03,\
  04,05
"Path"=hex(2):25,00,50,00,00,00
"List"=hex(7):61,00,00,00,62,00,00,00,00,00
"Q"=hex(b):01,00,00,00,00,00,00,00
"Odd"=hex(20001):ff
"Big"=hex(3):` + strings.TrimSuffix(strings.Repeat("5a,", 20000), ",") + `

[\Software\Vendor\Sub]
"x"=dword:00000001

[\Software\Vendor]
"Count"=-

[-\Software\Vendor\Sub]

[\Other]
"s"=str(1):"string form"
`
	dir := t.TempDir()
	regPath := filepath.Join(dir, "in.reg")
	os.WriteFile(regPath, []byte(reg), 0o644)
	base := regf.New()
	base.CreateKey(`Software\Old`)
	hivexHive := writeHive(t, base)
	testutil.Run(t, "hivexregedit", "--merge", hivexHive, regPath)
	theirs, err := regf.ReadFile(hivexHive)
	if err != nil {
		t.Fatalf("reading hivex's merge: %v", err)
	}
	if err := regtext.Apply(base, strings.NewReader(reg), regtext.Options{}); err != nil {
		t.Fatal(err)
	}
	compare(t, "hivexregedit --merge", regftest.Flatten(base.Root, regftest.Exact), regftest.Flatten(theirs.Root, regftest.Exact))
	if base.Lookup(`Software\Vendor`).Value("Count") != nil || base.Lookup(`Software\Vendor\Sub`) != nil {
		t.Errorf("deletions not applied")
	}
}
