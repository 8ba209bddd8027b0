package loop

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Options configure an attachment.
type Options struct {
	ReadOnly bool
	// SizeLimit, when positive, exposes only the first SizeLimit bytes of the
	// file (used to hide the VHD footer of layer images).
	SizeLimit int64
	// DirectIO asks the loop driver to bypass the page cache of the backing file.
	DirectIO bool
}

// Device is an attached loop device. It holds the device open: the caller
// closes it once the device is in use (mounted), after which autoclear
// detaches it when the mount goes away.
type Device struct {
	Path string
	file *os.File
}

// Close releases this process's hold on the device. If nothing else uses
// it, the kernel detaches it.
func (d *Device) Close() error {
	if d.file == nil {
		return nil
	}
	err := d.file.Close()
	d.file = nil
	return err
}

// Attach binds backing to a free loop device.
func Attach(backing string, opts Options) (*Device, error) {
	flags := os.O_RDWR
	if opts.ReadOnly {
		flags = os.O_RDONLY
	}
	bf, err := os.OpenFile(backing, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: open backing file: %w", err)
	}
	defer bf.Close()

	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	defer ctl.Close()

	// Another process may grab the free device between GET_FREE and
	// CONFIGURE (EBUSY); retry with the next free one.
	for attempt := 0; attempt < 64; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loop: get free device: %w", err)
		}
		path := "/dev/loop" + strconv.Itoa(n)
		dev, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("loop: open %s: %w", path, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(bf.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		if opts.ReadOnly {
			cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
		}
		if opts.DirectIO {
			cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
		}
		if opts.SizeLimit > 0 {
			cfg.Info.Sizelimit = uint64(opts.SizeLimit)
		}
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], backing)
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if err == nil {
			return &Device{Path: path, file: dev}, nil
		}
		dev.Close()
		if errors.Is(err, unix.EBUSY) {
			continue
		}
		return nil, fmt.Errorf("loop: configure %s for %s: %w", path, backing, err)
	}
	return nil, fmt.Errorf("loop: no free loop device for %s after retries", backing)
}

// Info describes an attached loop device, as sysfs reports it.
type Info struct {
	Path    string // /dev/loopN
	Backing string // backing file path ("(deleted)" suffix removed)
}

// List returns every attached loop device and its backing file.
func List() ([]Info, error) {
	entries, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, e := range entries {
		b, err := os.ReadFile(e)
		if err != nil {
			continue // detached meanwhile
		}
		name := filepath.Base(filepath.Dir(filepath.Dir(e)))
		backing := strings.TrimSuffix(string(bytes.TrimSpace(b)), " (deleted)")
		out = append(out, Info{Path: "/dev/" + name, Backing: backing})
	}
	return out, nil
}

// Detach clears a loop device (LOOP_CLR_FD). With autoclear set the device
// is cleared lazily once unused; this is for leftovers found by gc.
func Detach(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loop: open %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("loop: detach %s: %w", path, err)
	}
	return nil
}
