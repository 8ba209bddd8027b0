package wintar_test

import (
	"archive/tar"
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/pkg/wclayer/synth"
	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// FuzzReader: whatever the input, the reader does not panic, and whatever
// it accepts the writer writes back to a tar that reads the same.
func FuzzReader(f *testing.F) {
	// Small seeds only: generated layers carry hives of tens of KiB, too
	// big for the fuzzer to mutate usefully.
	a := file("Files/a", "MSWINDOWS.fileattr", "33", "MSWINDOWS.sd", "O:BAG:SYD:(A;;FA;;;BA)",
		"MSWINDOWS.xattr.X", "AQI=", "LIBARCHIVE.creationtime", "-1.5")
	a.data = "data"
	s := file("Files/a:s:$DATA")
	s.data = "s"
	f.Add(rawTarTB(f, dir("Files"), a, s, hdr{name: "Files/j", typ: tar.TypeSymlink, link: `C:\x`,
		pax: map[string]string{"MSWINDOWS.mountpoint": "1", "MSWINDOWS.fileattr": "1040"}},
		hdr{name: "Files/h", typ: tar.TypeLink, link: "Files/a"}, file("Files/.wh.b")))
	f.Fuzz(readerRoundTrip)
}

func readerRoundTrip(t *testing.T, in []byte) {
	{
		entries, err := readAll(bytes.NewReader(in))
		if err != nil {
			return
		}
		var out bytes.Buffer
		w := wintar.NewWriter(&out)
		for _, e := range entries {
			if err := w.WriteEntry(e.Entry, strings.NewReader(e.data)); err != nil {
				t.Fatalf("writing back an accepted entry: %v", err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		back, err := readAll(&out)
		if err != nil {
			t.Fatalf("reading back: %v", err)
		}
		if len(back) != len(entries) {
			t.Fatalf("%d entries became %d", len(entries), len(back))
		}
		for i := range back {
			if !reflect.DeepEqual(back[i], entries[i]) {
				t.Fatalf("entry %d: %+v became %+v", i, entries[i].Entry, back[i].Entry)
			}
		}
	}
}

// FuzzSDDL: no panic, and every descriptor produced is well-formed.
func FuzzSDDL(f *testing.F) {
	for _, s := range synth.SDDLs {
		f.Add(s)
	}
	f.Add("O:S-1-5-21-1-2-3-500G:BAD:NO_ACCESS_CONTROLS:P(ML;;NW;;;LW)")
	f.Fuzz(func(t *testing.T, s string) {
		sd, err := wintar.SDDLToSecurityDescriptor(s)
		if err != nil {
			return
		}
		if err := wintar.CheckSecurityDescriptor(sd); err != nil {
			t.Fatalf("%q gave a bad descriptor %x: %v", s, sd, err)
		}
	})
}
