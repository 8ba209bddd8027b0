package guest

import (
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/pkg/agent"
)

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// setIdentity makes a VM restored from a template its own machine: clones
// of one template resume with the same RNG state, clock and hostname.
func setIdentity(a agent.IdentityArgs) (any, error) {
	if len(a.Seed) < 32 || len(a.Seed) > 512 || len(a.Seed)%4 != 0 {
		return nil, &agent.Error{Code: agent.CodeInvalid, Message: fmt.Sprintf("seed of %d bytes: want 32 to 512, a multiple of 4", len(a.Seed))}
	}
	if !hostnameRE.MatchString(a.Hostname) {
		return nil, &agent.Error{Code: agent.CodeInvalid, Message: fmt.Sprintf("hostname %q", a.Hostname)}
	}
	if a.UnixNano <= 0 {
		return nil, &agent.Error{Code: agent.CodeInvalid, Message: fmt.Sprintf("time %d", a.UnixNano)}
	}
	if err := reseed(a.Seed); err != nil {
		return nil, err
	}
	ts := unix.NsecToTimespec(a.UnixNano)
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return nil, fmt.Errorf("clock_settime: %w", err)
	}
	if err := unix.Sethostname([]byte(a.Hostname)); err != nil {
		return nil, fmt.Errorf("sethostname %q: %w", a.Hostname, err)
	}
	var r agent.IdentityResult
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return nil, fmt.Errorf("uname: %w", err)
	}
	r.Hostname = unix.ByteSliceToString(u.Nodename[:])
	if err := unix.ClockGettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return nil, fmt.Errorf("clock_gettime: %w", err)
	}
	r.UnixNano = ts.Nano()
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	r.BootID = strings.TrimSpace(string(b))
	r.Random = make([]byte, 16)
	if _, err := unix.Getrandom(r.Random, 0); err != nil {
		return nil, fmt.Errorf("getrandom: %w", err)
	}
	return r, nil
}

// reseed credits seed to the input pool (RNDADDENTROPY, struct
// rand_pool_info) and makes the CRNG reseed from it now (RNDRESEEDCRNG)
// rather than at its next scheduled reseed.
func reseed(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/urandom: %w", err)
	}
	defer f.Close()
	info := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(seed)*8)) // entropy_count, bits
	binary.NativeEndian.PutUint32(info[4:], uint32(len(seed)))   // buf_size, bytes
	copy(info[8:], seed)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}
