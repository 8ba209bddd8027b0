package layerconv

import (
	"errors"
	"io"
	"sync"
)

// pipeChunk and pipeChunks size a pipe's buffers: enough that the two
// sides run concurrently instead of taking turns, as with io.Pipe.
const (
	pipeChunk  = 256 << 10
	pipeChunks = 4
)

// errPipeClosed is what writes get once the reader has stopped reading.
var errPipeClosed = errors.New("pipe reader stopped")

// pipe is a buffered in-memory pipe: the writer fills fixed buffers that the
// reader drains in order, so a producer (decompression, the tar writer) and
// its consumer work at the same time on the two CPUs. Buffers are recycled.
type pipe struct {
	full chan []byte   // filled buffers, in order; closed by the writer
	free chan []byte   // empty buffers
	stop chan struct{} // closed when the reader gives up
	once sync.Once
	err  error // the writer's close error, set before full is closed

	wbuf []byte // writer: buffer being filled

	rbuf []byte // reader: rest of the current buffer
	last []byte // reader: buffer to recycle on the next read
	rerr error  // reader: sticky end
}

func newPipe() *pipe {
	p := &pipe{full: make(chan []byte, pipeChunks), free: make(chan []byte, pipeChunks), stop: make(chan struct{})}
	for i := 0; i < pipeChunks; i++ {
		p.free <- make([]byte, 0, pipeChunk)
	}
	return p
}

// buffer returns the writer's buffer, waiting for a free one if needed.
func (p *pipe) buffer() ([]byte, error) {
	if p.wbuf != nil {
		return p.wbuf, nil
	}
	select { // a closed reader first, so that the writer stops promptly
	case <-p.stop:
		return nil, errPipeClosed
	default:
	}
	select {
	case b := <-p.free:
		p.wbuf = b[:0]
		return p.wbuf, nil
	case <-p.stop:
		return nil, errPipeClosed
	}
}

// send hands the writer's buffer to the reader.
func (p *pipe) send() error {
	b := p.wbuf
	p.wbuf = nil
	select {
	case p.full <- b:
		return nil
	case <-p.stop:
		return errPipeClosed
	}
}

// Write copies b into the pipe; it fails once the reader has closed.
func (p *pipe) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		buf, err := p.buffer()
		if err != nil {
			return n, err
		}
		c := copy(buf[len(buf):cap(buf)], b)
		p.wbuf = buf[:len(buf)+c]
		n += c
		b = b[c:]
		if len(p.wbuf) == cap(p.wbuf) {
			if err := p.send(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// CloseWrite flushes what the writer holds and ends the stream: the reader
// sees err after the data (io.EOF for nil). Call it once.
func (p *pipe) CloseWrite(err error) {
	if len(p.wbuf) > 0 {
		p.send() // fails only when nobody reads any more
	}
	if err == nil {
		err = io.EOF
	}
	p.err = err
	close(p.full)
}

// Read reads what the writer wrote, then its close error.
func (p *pipe) Read(b []byte) (int, error) {
	for len(p.rbuf) == 0 {
		if p.rerr != nil {
			return 0, p.rerr
		}
		if p.last != nil {
			p.free <- p.last[:0] // never blocks: at most pipeChunks buffers exist
			p.last = nil
		}
		buf, ok := <-p.full
		if !ok {
			p.rerr = p.err
			continue
		}
		p.rbuf, p.last = buf, buf
	}
	n := copy(b, p.rbuf)
	p.rbuf = p.rbuf[n:]
	return n, nil
}

// CloseRead tells the writer that nobody reads any more: its writes fail
// with errPipeClosed.
func (p *pipe) CloseRead() { p.once.Do(func() { close(p.stop) }) }

// readAhead returns a reader of rc's content that a goroutine reads (and so
// decompresses and hashes) ahead of the caller. rc's errors reach the
// caller after the data read before them. Close stops the goroutine, waits
// for it (so rc must not block for ever in Read: files and local pipes are
// fine) and closes rc.
func readAhead(rc io.ReadCloser) io.ReadCloser {
	p := newPipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := io.Copy(p, rc)
		p.CloseWrite(err)
	}()
	return &aheadReader{p: p, rc: rc, done: done}
}

type aheadReader struct {
	p    *pipe
	rc   io.ReadCloser
	done chan struct{}
}

func (a *aheadReader) Read(b []byte) (int, error) { return a.p.Read(b) }

func (a *aheadReader) Close() error {
	a.p.CloseRead()
	<-a.done // the goroutine no longer touches rc
	return a.rc.Close()
}
