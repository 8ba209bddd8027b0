package diskio

import (
	"errors"
	"io"
	"math"
	"strings"
	"testing"
)

func TestReadAtClipsAndReportsEOF(t *testing.T) {
	const size = 10
	var gotLen int
	var gotOff int64
	read := func(p []byte, off int64) (int, error) {
		gotLen, gotOff = len(p), off
		for i := range p {
			p[i] = 7
		}
		return len(p), nil
	}
	for _, c := range []struct {
		off, n  int64
		wantN   int
		wantEOF bool
	}{
		{0, 10, 10, false},
		{4, 4, 4, false},
		{6, 8, 4, true},
		{10, 1, 0, true},
		{math.MaxInt64, 1, 0, true},
	} {
		gotLen = -1
		n, err := ReadAt("d", size, make([]byte, c.n), c.off, read)
		if n != c.wantN || (err == io.EOF) != c.wantEOF || (err != nil && err != io.EOF) {
			t.Errorf("read %d at %d: n %d err %v", c.n, c.off, n, err)
		}
		if c.wantN > 0 && (gotLen != c.wantN || gotOff != c.off) {
			t.Errorf("read %d at %d: backend saw %d at %d", c.n, c.off, gotLen, gotOff)
		}
	}
	if _, err := ReadAt("disk.vhd", size, make([]byte, 1), -1, read); err == nil || !strings.Contains(err.Error(), "disk.vhd") {
		t.Errorf("negative offset: %v", err)
	}
	boom := errors.New("boom")
	if n, err := ReadAt("d", size, make([]byte, 20), 0, func(p []byte, _ int64) (int, error) { return 3, boom }); n != 3 || err != boom {
		t.Errorf("backend error: %d %v", n, err)
	}
}

func TestCheckWrite(t *testing.T) {
	for _, c := range []struct {
		off int64
		n   int
		ok  bool
	}{
		{0, 10, true}, {10, 0, true}, {9, 1, true},
		{9, 2, false}, {-1, 1, false}, {11, 0, false}, {math.MaxInt64, 1, false},
	} {
		if err := CheckWrite("d", 10, c.n, c.off); (err == nil) != c.ok {
			t.Errorf("write %d at %d: %v", c.n, c.off, err)
		}
	}
}
