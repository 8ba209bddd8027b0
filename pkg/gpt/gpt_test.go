package gpt

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

// newTwoPartition builds the UVM template layout: MSR then basic data.
func newTwoPartition(t *testing.T, size, sectorSize int64) *Table {
	t.Helper()
	tb, err := New(size, sectorSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Add(MicrosoftReserved, "Microsoft reserved partition", 16<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Add(BasicData, "Basic data partition", 0); err != nil {
		t.Fatal(err)
	}
	return tb
}

func writeFile(t *testing.T, tb *Table) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(tb.DiskSize); err != nil {
		t.Fatal(err)
	}
	if err := tb.Write(f); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestRoundTrip(t *testing.T) {
	for _, ss := range []int64{512, 4096} {
		tb := newTwoPartition(t, 64<<20, ss)
		f := writeFile(t, tb)
		got, err := Read(f, tb.DiskSize, ss)
		if err != nil {
			t.Fatalf("sector %d: %v", ss, err)
		}
		if got.FromBackup || got.DiskID != tb.DiskID || !reflect.DeepEqual(got.Partitions, tb.Partitions) {
			t.Fatalf("sector %d: read %+v, wrote %+v", ss, got, tb)
		}
		msr, data := got.Partitions[0], got.Partitions[1]
		if msr.Offset(ss) != 1<<20 || msr.Size(ss) != 16<<20 || data.Offset(ss) != 17<<20 {
			t.Errorf("sector %d: MSR at %d size %d, data at %d", ss, msr.Offset(ss), msr.Size(ss), data.Offset(ss))
		}
		// The data partition ends on the last whole MiB before the backup array.
		if end := data.Offset(ss) + data.Size(ss); end != 63<<20 {
			t.Errorf("sector %d: data partition ends at %d, want %d", ss, end, 63<<20)
		}
		if data.Name != "Basic data partition" || data.Type != BasicData {
			t.Errorf("sector %d: data partition %+v", ss, data)
		}
	}
}

func TestPrimaryDamageFallsBackToBackup(t *testing.T) {
	for _, tc := range []struct {
		name string
		off  int64 // byte to flip
	}{
		{"header", 512 + 60},          // inside the disk GUID of the primary header
		{"entries", 2*512 + 128 + 20}, // inside the second entry's unique GUID
	} {
		tb := newTwoPartition(t, 64<<20, 512)
		f := writeFile(t, tb)
		b := []byte{0}
		f.ReadAt(b, tc.off)
		b[0] ^= 0xFF
		f.WriteAt(b, tc.off)
		got, err := Read(f, tb.DiskSize, 512)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !got.FromBackup || got.DiskID != tb.DiskID || !reflect.DeepEqual(got.Partitions, tb.Partitions) {
			t.Fatalf("%s: read %+v", tc.name, got)
		}
		// Damage the backup too: now it is an error.
		last := tb.DiskSize - 512 + 60
		f.ReadAt(b, last)
		b[0] ^= 0xFF
		f.WriteAt(b, last)
		if _, err := Read(f, tb.DiskSize, 512); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: both tables damaged: %v", tc.name, err)
		}
	}
}

func TestBadInput(t *testing.T) {
	if _, err := New(1<<20, 512); err == nil {
		t.Error("1 MiB disk accepted")
	}
	if _, err := New(8<<20, 1000); err == nil {
		t.Error("sector size 1000 accepted")
	}
	tb, _ := New(8<<20, 512)
	if _, err := tb.Add(BasicData, strings.Repeat("x", 37), 0); err == nil {
		t.Error("37-character name accepted")
	}
	if _, err := tb.Add(BasicData, "big", 8<<20); err == nil {
		t.Error("partition as large as the disk accepted")
	}
	tb.Partitions = []Partition{{Type: BasicData, FirstLBA: 2, LastLBA: 100}}
	if err := tb.Write(discard{}); err == nil {
		t.Error("partition over the primary array accepted")
	}
	tb.Partitions = []Partition{{Type: BasicData, FirstLBA: 2048, LastLBA: 4095}, {Type: BasicData, FirstLBA: 4000, LastLBA: 5000}}
	if err := tb.Write(discard{}); err == nil {
		t.Error("overlapping partitions accepted")
	}
	zero := make(zeroReader, 0)
	if _, err := Read(zero, 8<<20, 512); !errors.Is(err, ErrCorrupt) {
		t.Errorf("blank disk: %v", err)
	}
}

type discard struct{}

func (discard) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

type zeroReader []byte

func (zeroReader) ReadAt(p []byte, _ int64) (int, error) {
	clear(p)
	return len(p), nil
}

func TestGUID(t *testing.T) {
	// The on-disk bytes of the basic data type, as every GPT disk has them.
	want := []byte{0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7}
	if string(BasicData[:]) != string(want) {
		t.Errorf("basic data bytes % x", BasicData[:])
	}
	if s := BasicData.String(); s != "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" {
		t.Errorf("String %s", s)
	}
	if _, err := ParseGUID("{ebd0a0a2-b9e5-4433-87c0-68b6b72699cz}"); err == nil {
		t.Error("bad hex accepted")
	}
}

// TestSgdisk checks our table with an independent implementation.
func TestSgdisk(t *testing.T) {
	testutil.NeedTool(t, "sgdisk")
	tb := newTwoPartition(t, 64<<20, 512)
	f := writeFile(t, tb)
	out := string(testutil.Run(t, "sgdisk", "-v", f.Name()))
	if !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", out)
	}
	out = string(testutil.Run(t, "sgdisk", "-p", f.Name()))
	for _, want := range []string{
		"Disk identifier (GUID): " + strings.ToUpper(tb.DiskID.String()),
		"1            2048           34815   16.0 MiB    0C01  Microsoft reserved ...",
		"2           34816          129023   46.0 MiB    0700  Basic data partition",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("sgdisk -p lacks %q:\n%s", want, out)
		}
	}
	out = string(testutil.Run(t, "sgdisk", "-i", "2", f.Name()))
	if !strings.Contains(out, "Partition unique GUID: "+strings.ToUpper(tb.Partitions[1].ID.String())) {
		t.Errorf("sgdisk -i 2:\n%s", out)
	}
}
