package cimlayer

import (
	"io"
	"sync/atomic"

	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// The tar is read and parsed in a goroutine of its own, a few MiB ahead of
// the CIM writer, so that parsing overlaps with hashing and writing file
// content (the CIM writer digests every file). Memory in flight is bounded
// by aheadChunks × aheadChunkSize whatever the file sizes.
const (
	aheadChunks    = 16
	aheadChunkSize = 256 << 10
)

// aheadItem is an entry header (e set), a chunk of the current entry's
// data (data set) or the reader's error.
type aheadItem struct {
	e    *wintar.Entry
	data []byte
	err  error
}

type readAhead struct {
	items chan aheadItem
	free  chan []byte
	stop  chan struct{}
	read  atomic.Int64 // tar bytes read
	next  *aheadItem   // an item taken but not consumed
	chunk []byte       // the chunk being consumed, recycled when done
	cur   []byte       // its unread part
}

// newReadAhead starts reading r; call close when done with it.
func newReadAhead(r io.Reader) *readAhead {
	a := &readAhead{items: make(chan aheadItem, aheadChunks), free: make(chan []byte, aheadChunks+2), stop: make(chan struct{})}
	go a.produce(wintar.NewReader(countingReader{r, &a.read}))
	return a
}

func (a *readAhead) send(it aheadItem) bool {
	select {
	case <-a.stop: // checked first: a select with both ready picks at random
		return false
	default:
	}
	select {
	case a.items <- it:
		return true
	case <-a.stop:
		return false
	}
}

func (a *readAhead) produce(tr *wintar.Reader) {
	defer close(a.items)
	for {
		e, err := tr.Next()
		if err != nil {
			if err != io.EOF {
				a.send(aheadItem{err: err})
			}
			return
		}
		if !a.send(aheadItem{e: e}) {
			return
		}
		if e.Kind != wintar.KindFile && e.Kind != wintar.KindStream {
			continue
		}
		for {
			var buf []byte
			select {
			case buf = <-a.free:
			default:
				buf = make([]byte, aheadChunkSize)
			}
			n, err := io.ReadFull(tr, buf)
			if n > 0 && !a.send(aheadItem{data: buf[:n]}) {
				return
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				break // the entry's end (the reader reports a cut archive itself)
			}
			if err != nil {
				a.send(aheadItem{err: err})
				return
			}
		}
	}
}

// take returns the next item, or false at the end of the archive.
func (a *readAhead) take() (aheadItem, bool) {
	if a.next != nil {
		it := *a.next
		a.next = nil
		return it, true
	}
	it, ok := <-a.items
	return it, ok
}

// Next returns the next entry, skipping what is left of the current one's
// data; io.EOF after the last.
func (a *readAhead) Next() (*wintar.Entry, error) {
	a.recycle()
	for {
		it, ok := a.take()
		if !ok {
			return nil, io.EOF
		}
		if it.err != nil {
			a.next = &it // sticky
			return nil, it.err
		}
		if it.e != nil {
			return it.e, nil
		}
		a.put(it.data)
	}
}

// put offers a consumed chunk back to the reading goroutine.
func (a *readAhead) put(b []byte) {
	select {
	case a.free <- b[:cap(b)]:
	default:
	}
}

// Read reads the current entry's data.
func (a *readAhead) Read(p []byte) (int, error) {
	for len(a.cur) == 0 {
		a.recycle()
		it, ok := a.take()
		if !ok {
			return 0, io.EOF
		}
		if it.data == nil {
			a.next = &it // the next entry, or an error
			if it.err != nil {
				return 0, it.err
			}
			return 0, io.EOF
		}
		a.chunk, a.cur = it.data, it.data
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	return n, nil
}

func (a *readAhead) recycle() {
	if a.chunk != nil {
		a.put(a.chunk)
		a.chunk, a.cur = nil, nil
	}
}

// close stops the reading goroutine and waits for it.
func (a *readAhead) close() {
	close(a.stop)
	for range a.items {
	}
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
