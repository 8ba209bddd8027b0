// Package synth generates synthetic Windows container layer tars for tests,
// demos and benchmarks: a base layer with real hives (made with pkg/regf), a
// utility VM tree with a BCD store, files with security descriptors, EAs,
// alternate data streams, hard links, symlinks and junctions, and child
// layers with changed files, whiteouts and delta hives.
//
// Output depends only on the options: the same seed gives the same bytes.
// File content is streamed from a seeded generator, so memory stays small
// whatever the layer's size.
package synth

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// Options size a synthetic base layer.
type Options struct {
	Seed  uint64
	Files int   // regular files besides hives and UVM files; 0 means 200
	Bytes int64 // their total size, about; 0 means 4 MiB
	// UtilityVM adds UtilityVM/Files with a BCD store, boot files and hives.
	UtilityVM bool
	// Build is the Windows build the SOFTWARE hives report; 0 means 20348
	// (too old for CIM boot of the utility VM unless forced).
	Build int
}

func (o Options) withDefaults() Options {
	if o.Files <= 0 {
		o.Files = 200
	}
	if o.Bytes <= 0 {
		o.Bytes = 4 << 20
	}
	if o.Build <= 0 {
		o.Build = 20348
	}
	return o
}

// Stats count what a generated layer holds.
type Stats struct {
	Entries int   // tar entries
	Files   int   // regular files (hives included)
	Bytes   int64 // data of files and streams
}

// SDDLs are the security descriptors given to generated entries, as SDDL:
// Windows defaults, a TrustedInstaller-owned protected one, one with a SACL
// and the owner-only descriptor Linux-built layers carry.
var SDDLs = []string{
	"O:BAG:SYD:(A;;FA;;;BA)(A;;FA;;;SY)(A;;0x1200a9;;;BU)",
	"O:SYG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICIIO;GA;;;CO)(A;OICI;0x1200a9;;;BU)",
	"O:" + trustedInstaller + "G:" + trustedInstaller + "D:PAI(A;;FA;;;" + trustedInstaller + ")(A;;0x1200a9;;;BA)(A;;0x1200a9;;;SY)(A;;0x1200a9;;;BU)(A;;0x1200a9;;;AC)",
	"O:BAG:BUD:AI(A;ID;FA;;;WD)S:AI(AU;SAFA;FA;;;WD)(ML;;NW;;;LW)",
	"O:BUG:BU",
}

const trustedInstaller = "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"

var sds = func() [][]byte {
	out := make([][]byte, len(SDDLs))
	for i, s := range SDDLs {
		sd, err := wintar.SDDLToSecurityDescriptor(s)
		if err != nil {
			panic(fmt.Sprintf("synth: SDDL table: %v", err))
		}
		out[i] = sd
	}
	return out
}()

var (
	exts     = []string{"dll", "exe", "txt", "mui", "dat"}
	dirRoots = []string{"Files/Windows/System32", "Files/Windows/WinSxS", "Files/Program Files/Synth", "Files/ProgramData/Synth"}
)

// file is one generated regular file of the base layer.
type file struct {
	path    string
	size    int64
	content uint64 // seed of its data
	n       int    // index, drives its metadata
}

// plan lays out the base layer's generated directories and files.
func plan(o Options) (dirs []string, files []file) {
	rng := rand.New(rand.NewPCG(o.Seed, 0x706c616e)) // "plan"
	ndirs := max(1, o.Files/40)
	for i := range ndirs {
		parent := dirRoots[i%len(dirRoots)]
		if i%5 == 4 {
			parent = dirs[i-1] // some depth
		}
		dirs = append(dirs, fmt.Sprintf("%s/d%04d", parent, i))
	}
	mean := o.Bytes / int64(o.Files)
	for j := range o.Files {
		f := file{
			path:    fmt.Sprintf("%s/f%05d.%s", dirs[rng.IntN(ndirs)], j, exts[j%len(exts)]),
			content: rng.Uint64(),
			n:       j,
		}
		if mean > 0 {
			f.size = rng.Int64N(2*mean + 1)
		}
		files = append(files, f)
	}
	return dirs, files
}

// layerWriter writes entries, adding parent directories first.
type layerWriter struct {
	w     *wintar.Writer
	dirs  map[string]bool
	stats Stats
	t     time.Time // base time of this layer's entries
}

func newLayerWriter(w io.Writer, t time.Time) *layerWriter {
	return &layerWriter{w: wintar.NewWriter(w), dirs: map[string]bool{}, t: t}
}

// times gives entry n distinct, 100 ns-granular Windows times.
func (l *layerWriter) times(e *wintar.Entry, n int) {
	base := l.t.Add(time.Duration(n) * time.Second)
	e.CreationTime = base
	e.LastWriteTime = base.Add(time.Duration(n%7)*time.Hour + 1234500*time.Nanosecond)
	e.LastAccessTime = e.LastWriteTime.Add(300 * time.Nanosecond)
	e.ChangeTime = e.LastWriteTime.Add(time.Minute)
}

func (l *layerWriter) parents(p string) error {
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && !l.dirs[p[:i]] {
			if err := l.dir(p[:i], 1); err != nil {
				return err
			}
		}
	}
	return nil
}

func (l *layerWriter) dir(p string, sd int) error {
	if l.dirs[p] {
		return nil
	}
	if err := l.parents(p); err != nil {
		return err
	}
	l.dirs[p] = true
	e := &wintar.Entry{Path: p, Kind: wintar.KindDir, Attributes: wintar.AttrDirectory, SecurityDescriptor: sds[sd]}
	l.times(e, len(l.dirs))
	return l.put(e, nil)
}

func (l *layerWriter) put(e *wintar.Entry, data io.Reader) error {
	if e.Kind != wintar.KindDir && e.Kind != wintar.KindWhiteout {
		if err := l.parents(e.Path); err != nil {
			return err
		}
	}
	if err := l.w.WriteEntry(e, data); err != nil {
		return err
	}
	l.stats.Entries++
	if e.Kind == wintar.KindFile {
		l.stats.Files++
	}
	l.stats.Bytes += e.Size
	return nil
}

// blob writes a file whose content is b.
func (l *layerWriter) blob(p string, attrs uint32, b []byte, n int) error {
	e := &wintar.Entry{Path: p, Kind: wintar.KindFile, Attributes: attrs, SecurityDescriptor: sds[2], Size: int64(len(b))}
	l.times(e, n)
	return l.put(e, bytes.NewReader(b))
}

// file writes a generated file and, by its index, an EA, a stream and a
// hard link.
func (l *layerWriter) file(f file, sizeOverride int64, content uint64) error {
	e := &wintar.Entry{Path: f.path, Kind: wintar.KindFile, Attributes: wintar.AttrArchive,
		SecurityDescriptor: sds[f.n%len(sds)], Size: f.size}
	if sizeOverride >= 0 {
		e.Size = sizeOverride
	}
	switch f.n % 11 {
	case 3:
		e.Attributes |= wintar.AttrReadOnly
	case 5:
		e.Attributes |= wintar.AttrHidden | wintar.AttrSystem
	case 7:
		e.Attributes |= wintar.AttrSparse
	}
	if f.n%50 == 0 {
		e.EAs = []wintar.EA{{Name: "$KERNEL.PURGE.ESBCACHE", Value: []byte{byte(f.n), 1, 2, 3}}, {Name: "SYNTH.EA", Value: []byte(f.path)}}
	}
	l.times(e, f.n)
	if err := l.put(e, io.LimitReader(newContent(content), e.Size)); err != nil {
		return err
	}
	if f.n%40 == 1 {
		zone := []byte("[ZoneTransfer]\r\nZoneId=3\r\n")
		s := &wintar.Entry{Path: f.path, Kind: wintar.KindStream, Stream: "Zone.Identifier", Size: int64(len(zone))}
		l.times(s, f.n)
		if err := l.put(s, bytes.NewReader(zone)); err != nil {
			return err
		}
	}
	if f.n%60 == 2 {
		h := &wintar.Entry{Path: f.path + ".hardlink", Kind: wintar.KindHardlink, Target: f.path, Attributes: e.Attributes}
		l.times(h, f.n)
		return l.put(h, nil)
	}
	return nil
}

func (l *layerWriter) link(p, target string, junction bool, n int) error {
	e := &wintar.Entry{Path: p, Kind: wintar.KindSymlink, Target: target, SecurityDescriptor: sds[1],
		Attributes: wintar.AttrDirectory | wintar.AttrReparsePoint | wintar.AttrHidden | wintar.AttrSystem}
	if junction {
		e.Kind = wintar.KindJunction
	}
	l.times(e, n)
	return l.put(e, nil)
}

func (l *layerWriter) hive(p string, h *regf.Hive, n int) error {
	raw, err := h.Marshal()
	if err != nil {
		return fmt.Errorf("hive %s: %w", p, err)
	}
	return l.blob(p, wintar.AttrArchive, raw, n)
}

func (l *layerWriter) close() (Stats, error) {
	return l.stats, l.w.Close()
}

// Base writes a base layer tar made from o to w.
func Base(w io.Writer, o Options) (Stats, error) {
	o = o.withDefaults()
	l := newLayerWriter(w, epoch)
	hives, err := o.baseHives()
	if err != nil {
		return Stats{}, err
	}
	for _, d := range []string{"Files", "Files/Windows/System32/config", "Files/Users/Public", "Files/ProgramData"} {
		if err := l.dir(d, 1); err != nil {
			return Stats{}, err
		}
	}
	for i, name := range HiveNames {
		if err := l.hive("Files/Windows/System32/config/"+name, hives[name], i); err != nil {
			return Stats{}, err
		}
	}
	dirs, files := plan(o)
	for _, d := range dirs {
		if err := l.dir(d, 1); err != nil {
			return Stats{}, err
		}
	}
	for _, f := range files {
		if err := l.file(f, -1, f.content); err != nil {
			return Stats{}, err
		}
	}
	// Windows' own compatibility links, and a relative one.
	if err := l.link("Files/Documents and Settings", `C:\Users`, true, 1); err != nil {
		return Stats{}, err
	}
	if err := l.link("Files/Users/All Users", `C:\ProgramData`, false, 2); err != nil {
		return Stats{}, err
	}
	if err := l.link("Files/ProgramData/Synth/System32", `..\..\Windows\System32`, false, 3); err != nil {
		return Stats{}, err
	}
	if o.UtilityVM {
		if err := uvm(l, o, hives); err != nil {
			return Stats{}, err
		}
	}
	return l.close()
}

func uvm(l *layerWriter, o Options, hives map[string]*regf.Hive) error {
	store, err := UVMBCD()
	if err != nil {
		return err
	}
	for _, d := range []string{"UtilityVM", "UtilityVM/Files"} {
		if err := l.dir(d, 1); err != nil {
			return err
		}
	}
	if err := l.hive("UtilityVM/Files/EFI/Microsoft/Boot/BCD", store, 10); err != nil {
		return err
	}
	boot := make([]byte, 64<<10)
	_, _ = io.ReadFull(newContent(o.Seed^0xb007), boot)
	if err := l.blob("UtilityVM/Files/EFI/Microsoft/Boot/bootmgfw.efi", wintar.AttrArchive, boot, 11); err != nil {
		return err
	}
	for i, name := range []string{"SOFTWARE", "SYSTEM"} {
		if err := l.hive("UtilityVM/Files/Windows/System32/config/"+name, hives[name], 12+i); err != nil {
			return err
		}
	}
	kernel := file{path: "UtilityVM/Files/Windows/System32/ntoskrnl.exe", size: 256 << 10, content: o.Seed ^ 0x6b, n: 62}
	return l.file(kernel, -1, kernel.content) // n%60 == 2: gets a hard link inside the UVM tree
}

// Child writes a layer on top of the base made from base: about a tenth of
// the base files rewritten, a fifteenth deleted, one directory deleted
// whole, new files added, and Hives/*_Delta for every config hive.
func Child(w io.Writer, base Options, seed uint64) (Stats, error) {
	base = base.withDefaults()
	l := newLayerWriter(w, epoch.Add(24*time.Hour))
	rng := rand.New(rand.NewPCG(seed, 0x6c61796572)) // "layer"
	bh, err := base.baseHives()
	if err != nil {
		return Stats{}, err
	}
	ch, err := ChildHives(bh, seed)
	if err != nil {
		return Stats{}, err
	}
	deltas, err := DeltaHives(bh, ch)
	if err != nil {
		return Stats{}, err
	}
	if err := l.dir("Files", 1); err != nil {
		return Stats{}, err
	}
	if err := l.dir("Hives", 1); err != nil {
		return Stats{}, err
	}
	for i, name := range HiveNames {
		if err := l.hive("Hives/"+DeltaNames[name], deltas[name], i); err != nil {
			return Stats{}, err
		}
	}
	dirs, files := plan(base)
	gone := ""
	if len(dirs) > 1 {
		gone = dirs[len(dirs)-1] + "/"
		if err := l.whiteout(strings.TrimSuffix(gone, "/")); err != nil {
			return Stats{}, err
		}
	}
	for _, f := range files {
		if gone != "" && strings.HasPrefix(f.path, gone) {
			continue
		}
		switch rng.IntN(30) {
		case 0, 1, 2: // rewritten
			mean := base.Bytes/int64(base.Files) + 1
			if err := l.file(f, rng.Int64N(2*mean), rng.Uint64()); err != nil {
				return Stats{}, err
			}
		case 3, 4: // deleted
			if err := l.whiteout(f.path); err != nil {
				return Stats{}, err
			}
		}
	}
	added := max(1, base.Files/10)
	for j := range added {
		f := file{path: fmt.Sprintf("Files/Program Files/SynthChild/c%04d/n%05d.%s", j%7, j, exts[j%len(exts)]),
			size: rng.Int64N(2*base.Bytes/int64(base.Files) + 1), content: rng.Uint64(), n: j}
		if err := l.file(f, -1, f.content); err != nil {
			return Stats{}, err
		}
	}
	return l.close()
}

func (l *layerWriter) whiteout(p string) error {
	if err := l.parents(p); err != nil {
		return err
	}
	return l.put(&wintar.Entry{Path: p, Kind: wintar.KindWhiteout}, nil)
}

// content is a seeded stream of pseudo-random bytes.
type content struct {
	rng *rand.PCG
	buf [8]byte
	n   int // unread bytes left in buf
}

func newContent(seed uint64) *content { return &content{rng: rand.NewPCG(seed, 0x64617461)} }

func (c *content) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if c.n == 0 {
			v := c.rng.Uint64()
			for i := range c.buf {
				c.buf[i] = byte(v >> (8 * i))
			}
			c.n = 8
		}
		k := copy(p[n:], c.buf[8-c.n:])
		c.n -= k
		n += k
	}
	return n, nil
}

// baseHives are BaseHives with the build number o asks for.
func (o Options) baseHives() (map[string]*regf.Hive, error) {
	hives, err := BaseHives(o.Seed)
	if err != nil || o.Build == 20348 {
		return hives, err
	}
	k, err := hives["SOFTWARE"].CreateKey(`Microsoft\Windows NT\CurrentVersion`)
	if err != nil {
		return nil, err
	}
	build := regf.StringData(fmt.Sprint(o.Build))
	for _, name := range []string{"CurrentBuild", "CurrentBuildNumber"} {
		if err := k.SetValue(name, regf.RegSZ, build); err != nil {
			return nil, err
		}
	}
	return hives, nil
}
