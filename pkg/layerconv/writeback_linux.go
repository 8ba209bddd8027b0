package layerconv

import (
	"os"

	"golang.org/x/sys/unix"
)

// writebackEvery is how much a layer image grows between two requests to
// start writing it back.
const writebackEvery = 8 << 20

// writebackFile is the layer image as the ext4 writer sees it. Every
// writebackEvery bytes it asks the kernel to start writing the dirty pages
// back (without waiting), so that the disk works while the conversion
// goes on and the store's final fsync has little left to wait for.
type writebackFile struct {
	f       *os.File
	pending int64
}

func newWritebackFile(f *os.File) *writebackFile { return &writebackFile{f: f} }

func (w *writebackFile) Read(b []byte) (int, error) { return w.f.Read(b) }

func (w *writebackFile) Seek(off int64, whence int) (int64, error) { return w.f.Seek(off, whence) }

func (w *writebackFile) Write(b []byte) (int, error) {
	n, err := w.f.Write(b)
	w.pending += int64(n)
	if w.pending >= writebackEvery {
		w.pending = 0
		// Only a hint: durability comes from the caller's fsync.
		if rc, err := w.f.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { unix.SyncFileRange(int(fd), 0, 0, unix.SYNC_FILE_RANGE_WRITE) })
		}
	}
	return n, err
}
