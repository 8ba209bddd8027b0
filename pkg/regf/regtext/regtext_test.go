package regtext

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/utf16le"
	"github.com/layervisor/layervisor/pkg/regf"
)

func apply(t *testing.T, h *regf.Hive, text string, opt Options) {
	t.Helper()
	if err := Apply(h, strings.NewReader(text), opt); err != nil {
		t.Fatal(err)
	}
}

func TestApplyAllForms(t *testing.T) {
	h := regf.New()
	apply(t, h, `Windows Registry Editor Version 5.00

; a comment
[HKEY_LOCAL_MACHINE\SOFTWARE\Vendor\App]
@="default"
"sz"="a \"quoted\" \\ value"
"dw"=dword:0000002A
"bin"=hex:de,ad,\
  be,ef
"exp"=hex(2):25,00,41,00,25,00,00,00
"multi"=hex(7):61,00,00,00,62,00,00,00,00,00
"qw"=hex(b):01,00,00,00,00,00,00,00
"none"=hex(0):
"custom"=hex(20001):ff
"wine"=str(2):"%X%"
"gone"="soon"

[HKEY_LOCAL_MACHINE\SOFTWARE\Vendor\App]
"gone"=-
@=-

[HKEY_LOCAL_MACHINE\SOFTWARE\Vendor\Old\Deep]
"x"=dword:1

[-HKEY_LOCAL_MACHINE\SOFTWARE\Vendor\Old]
[-HKEY_LOCAL_MACHINE\SOFTWARE\Vendor\NotThere]
`, Options{Prefix: `HKEY_LOCAL_MACHINE\SOFTWARE`})
	k := h.Lookup(`Vendor\App`)
	if k == nil {
		t.Fatal("key not created")
	}
	check := func(name string, typ regf.ValueType, data []byte) {
		t.Helper()
		v := k.Value(name)
		if v == nil || v.Type != typ || !bytes.Equal(v.Data, data) {
			t.Errorf("%q = %+v, want %s %x", name, v, typ, data)
		}
	}
	check("sz", regf.RegSZ, regf.StringData(`a "quoted" \ value`))
	check("dw", regf.RegDWord, regf.DWordData(42))
	check("bin", regf.RegBinary, []byte{0xde, 0xad, 0xbe, 0xef})
	check("exp", regf.RegExpandSZ, regf.StringData("%A%"))
	check("multi", regf.RegMultiSZ, regf.MultiStringData([]string{"a", "b"}))
	check("qw", regf.RegQWord, regf.QWordData(1))
	check("none", regf.RegNone, []byte{})
	check("custom", 0x20001, []byte{0xff})
	check("wine", regf.RegExpandSZ, regf.StringData("%X%"))
	if k.Value("gone") != nil || k.Value("") != nil {
		t.Errorf("value deletions not applied")
	}
	if h.Lookup(`Vendor\Old`) != nil {
		t.Errorf("[-key] not applied")
	}
}

func TestApplyUTF16WithBOM(t *testing.T) {
	text := "Windows Registry Editor Version 5.00\r\n\r\n[\\Ключ]\r\n\"имя\"=\"значение\"\r\n"
	b := append([]byte{0xFF, 0xFE}, utf16le.Encode(text)...)
	h := regf.New()
	if err := Apply(h, bytes.NewReader(b), Options{}); err != nil {
		t.Fatal(err)
	}
	if v := h.Lookup("ключ").Value("ИМЯ"); v == nil {
		t.Fatalf("UTF-16 file not applied")
	} else if s, _ := v.Text(); s != "значение" {
		t.Errorf("value %q", s)
	}
}

func TestApplyErrors(t *testing.T) {
	for _, tc := range []struct{ text, msg string }{
		{"[\\A]\n\"v\"=dword:xyz\n", "line 2"},
		{"\"v\"=\"outside\"\n", "outside a key"},
		{"[\\A]\n\"v\"=hex:0\n", "odd number"},
		{"[\\A]\n\"v\"=\"unterminated\n", "unterminated"},
		{"[\\A]\n\"v\"=bogus\n", "unrecognised"},
		{"[\\A\n", "unterminated key"},
		{"[-\\]\n", "root"},
		{"[\\Other\\Key]\n", "not under the prefix"},
	} {
		opt := Options{}
		if strings.Contains(tc.text, "Other") {
			opt.Prefix = `HKLM\X`
		}
		err := Apply(regf.New(), strings.NewReader(tc.text), opt)
		var se *SyntaxError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: error %v, want one mentioning %q", tc.text, err, tc.msg)
		}
	}
}

func TestExportDialect(t *testing.T) {
	h := regf.New()
	k, _ := h.CreateKey(`B\Sub`)
	k.SetValue("z", regf.RegDWord, regf.DWordData(0x10))
	k.SetValue("", regf.RegSZ, regf.StringData("d"))
	k.SetValue(`q"\`, regf.RegBinary, []byte{1, 2})
	h.CreateKey(`A`)
	var out bytes.Buffer
	if err := Export(&out, h.Root, `HKEY_LOCAL_MACHINE\X\`); err != nil {
		t.Fatal(err)
	}
	want := `Windows Registry Editor Version 5.00

[HKEY_LOCAL_MACHINE\X\]

[HKEY_LOCAL_MACHINE\X\A]

[HKEY_LOCAL_MACHINE\X\B]

[HKEY_LOCAL_MACHINE\X\B\Sub]
@=hex(1):64,00,00,00
"q\"\\"=hex(3):01,02
"z"=dword:00000010

`
	if out.String() != want {
		t.Errorf("export:\n%s\nwant:\n%s", out.String(), want)
	}
	// Export then Apply gives the same tree.
	h2 := regf.New()
	if err := Apply(h2, &out, Options{Prefix: `HKEY_LOCAL_MACHINE\X`}); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	Export(&again, h2.Root, `HKEY_LOCAL_MACHINE\X`)
	if again.String() != want {
		t.Errorf("re-export differs:\n%s", again.String())
	}
	// A subtree exports with its full path.
	out.Reset()
	Export(&out, h.Lookup(`b\sub`), "")
	if !strings.Contains(out.String(), "[\\B\\Sub]\n") {
		t.Errorf("subtree export:\n%s", out.String())
	}
}

// FuzzApply: any text either applies or fails with a SyntaxError; what
// applies exports and re-applies to the same export.
func FuzzApply(f *testing.F) {
	f.Add("Windows Registry Editor Version 5.00\n\n[\\A\\B]\n@=\"x\"\n\"v\"=dword:00000001\n\"h\"=hex(7):61,00,\\\n  00,00\n[-\\A\\C]\n\"d\"=-\n")
	f.Add("REGEDIT4\n[\\K]\n\"s\"=str(2):\"%P%\"\n\"b\"=hex:01,02\n")
	f.Fuzz(func(t *testing.T, text string) {
		h := regf.New()
		if err := Apply(h, strings.NewReader(text), Options{}); err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error is not a SyntaxError: %v", err)
			}
			return
		}
		var out bytes.Buffer
		if err := Export(&out, h.Root, ""); err != nil {
			t.Fatal(err)
		}
		h2 := regf.New()
		if err := Apply(h2, bytes.NewReader(out.Bytes()), Options{}); err != nil {
			t.Fatalf("our export does not apply: %v\n%s", err, out.String())
		}
		var again bytes.Buffer
		Export(&again, h2.Root, "")
		if again.String() != out.String() {
			t.Fatalf("export/apply not stable:\n%s\n---\n%s", out.String(), again.String())
		}
	})
}
