package layerconv

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"sync/atomic"
	"testing"
)

// Data crosses the pipe whole and in order, whatever the write and read
// sizes, and the writer's error comes after it.
func TestPipeOrderAndError(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	src := make([]byte, 5*pipeChunks*pipeChunk+123)
	rng.Read(src)
	bad := errors.New("bad input")
	p := newPipe()
	go func() {
		rest := src
		for len(rest) > 0 {
			n := min(len(rest), 1+rng.Intn(3*pipeChunk))
			if _, err := p.Write(rest[:n]); err != nil {
				t.Error(err)
				return
			}
			rest = rest[n:]
		}
		p.CloseWrite(bad)
	}()
	var got bytes.Buffer
	buf := make([]byte, 70000)
	for {
		n, err := p.Read(buf[:1+len(got.Bytes())%len(buf)])
		got.Write(buf[:n])
		if err != nil {
			if !errors.Is(err, bad) {
				t.Errorf("read error %v, want %v", err, bad)
			}
			break
		}
	}
	if !bytes.Equal(got.Bytes(), src) {
		t.Errorf("read %d bytes, not the %d written", got.Len(), len(src))
	}
}

// A writer blocked on a full pipe gets errPipeClosed once the reader
// gives up, instead of waiting for ever.
func TestPipeReaderGivesUp(t *testing.T) {
	p := newPipe()
	done := make(chan error)
	go func() {
		_, err := p.Write(make([]byte, (pipeChunks+2)*pipeChunk))
		done <- err
	}()
	p.Read(make([]byte, 10))
	p.CloseRead()
	if err := <-done; !errors.Is(err, errPipeClosed) {
		t.Errorf("blocked write returned %v, want errPipeClosed", err)
	}
}

// source yields n bytes, then err (io.EOF when nil); it records a Read
// after Close.
type source struct {
	n       int
	err     error
	closed  atomic.Bool
	lateUse atomic.Bool
}

func (s *source) Read(p []byte) (int, error) {
	if s.closed.Load() {
		s.lateUse.Store(true)
	}
	if s.n == 0 {
		if s.err != nil {
			return 0, s.err
		}
		return 0, io.EOF
	}
	n := min(len(p), s.n)
	clear(p[:n])
	s.n -= n
	return n, nil
}

func (s *source) Close() error { s.closed.Store(true); return nil }

// The read-ahead reader passes the source's data, then its error (a
// decompression or digest failure), and its Close stops the goroutine
// before closing the source, also half way through.
func TestReadAhead(t *testing.T) {
	bad := errors.New("flate: corrupt input")
	src := &source{n: 3*pipeChunk + 5, err: bad}
	ra := readAhead(src)
	b, err := io.ReadAll(ra)
	if len(b) != 3*pipeChunk+5 || !errors.Is(err, bad) {
		t.Errorf("read %d bytes and %v, want %d and %v", len(b), err, 3*pipeChunk+5, bad)
	}
	ra.Close()

	endless := &source{n: 1 << 40}
	ra = readAhead(endless)
	if _, err := io.ReadFull(ra, make([]byte, 2*pipeChunk)); err != nil {
		t.Fatal(err)
	}
	if err := ra.Close(); err != nil {
		t.Fatal(err)
	}
	if !endless.closed.Load() || endless.lateUse.Load() {
		t.Errorf("source closed %v, read after close %v; want closed, never read after", endless.closed.Load(), endless.lateUse.Load())
	}
}
