// Package agent is the protocol between the host and layervisor's guest
// agent in a utility VM, and its host-side client.
//
// The channel is a virtio-serial port: a byte stream with no connection
// semantics, which outlives any one host process. Every frame is therefore
// "LVA1", a 4-byte big-endian length and a JSON message, so the guest can
// find the next frame after garbage (a host killed mid-write) and can skip
// an oversized one. A "hello" with the protocol version starts a session.
package agent

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// GuestModules are the kernel modules the agent loads at boot (with their
// dependencies); the initramfs builder packs the same list.
var GuestModules = []string{"virtio_pci", "virtio_console", "virtio_balloon", "virtio_scsi", "sd_mod", "virtio_pmem", "nd_pmem", "overlay", "virtiofs", "ext4", "virtio_net", "bridge"}

// PortName is the virtio-serial port of the agent channel.
const PortName = "layervisor.agent"

// Version is the protocol version.
const Version = 1

// StreamRunning is the stream of the frame that says a started process
// exists (Message.Stream).
const StreamRunning = "running"

// MaxMessage bounds a frame's JSON.
const MaxMessage = 1 << 20

var magic = [4]byte{'L', 'V', 'A', '1'}

// Operations.
const (
	OpHello          = "hello"
	OpMountSCSI      = "mount_scsi"
	OpMountPmem      = "mount_pmem"
	OpMountVirtiofs  = "mount_virtiofs"
	OpUnmount        = "unmount"
	OpCombineLayers  = "combine_layers"
	OpRemoveCombined = "remove_combined"
	OpMkdir          = "mkdir"
	OpBindMount      = "bind_mount"
	OpExec           = "exec"
	OpStdin          = "stdin"
	OpStat           = "stat"
	OpList           = "list"
	OpShutdown       = "shutdown"
	OpSetIdentity    = "set_identity"
	OpSignal         = "signal" // to a running container (ExecArgs.Spec)
	OpResize         = "resize" // its terminal
	// OpExecInContainer runs a process in a running container
	// (ExecInContainerArgs); OpSignal and OpResize reach it by the
	// request's id, as a container's.
	OpExecInContainer = "exec_in_container"
	// Running containers, by id (ContainerArgs).
	OpContainerPids   = "container_pids"   // PidsResult
	OpContainerStats  = "container_stats"  // CgroupStatsResult
	OpPauseContainer  = "pause_container"  // freeze its processes
	OpResumeContainer = "resume_container" // thaw them
	// OpConfigureNetwork gives the guest's network cards (found by MAC)
	// their addresses and routes (NetworkArgs): a pod's network.
	OpConfigureNetwork = "configure_network"
	OpUpdateContainer  = "update_container" // UpdateArgs: new resource limits
)

// Error codes.
const (
	CodeInvalid      = "invalid-argument"
	CodeNotFound     = "not-found"
	CodeOutsideRoots = "outside-allowed-roots"
	CodeExecNotFound = "exec-not-found"
	CodeTooLarge     = "message-too-large"
	CodeInternal     = "internal"
)

// Error is an error the guest returned.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return fmt.Sprintf("guest agent: %s: %s", e.Code, e.Message) }

// IsCode reports whether err is a guest error with the code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Message is one frame.
type Message struct {
	ID   uint64          `json:"id"`
	Op   string          `json:"op,omitempty"`   // a request (or stdin data for exec ID)
	Args json.RawMessage `json:"args,omitempty"` // request arguments
	// Responses: Result and Error on the final frame (Done), stream data
	// before it.
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
	Done   bool            `json:"done,omitempty"`
	// Stream is "stdout", "stderr" or "stdin" (with Data), or "running":
	// a started process exists (a container's init or an exec), sent once
	// before its output ends.
	Stream string `json:"stream,omitempty"`
	Data   []byte `json:"data,omitempty"`
	EOF    bool   `json:"eof,omitempty"` // end of a stdin stream
}

// Request arguments and results.
type (
	HelloArgs   struct{ Version int }
	HelloResult struct {
		Version int
		Kernel  string
	}
	MountSCSIArgs struct {
		Controller, LUN, Partition int
		ReadOnly                   bool
		FSType, Target             string
	}
	MountPmemArgs struct {
		Addr, Size     uint64 // guest-physical region of the device
		FSType, Target string
	}
	MountVirtiofsArgs struct {
		Tag      string
		ReadOnly bool
		Target   string
	}
	PathArgs    struct{ Path string }
	CombineArgs struct {
		Lowers              []string
		Upper, Work, Target string
	}
	BindArgs struct {
		Source, Target string
		ReadOnly       bool
	}
	ExecArgs struct {
		Args  []string
		Env   []string
		Cwd   string
		Stdin bool // the host will send stdin frames
		// Container and Spec run a container with the guest's OCI
		// runtime instead of a guest process: Spec.Root.Path is its root
		// in the guest (under the allowed roots), Args/Env/Cwd are
		// unused. The user annotation (inroot) is resolved in the guest.
		Container string
		Spec      *specs.Spec
	}
	// SignalArgs and ResizeArgs name a running container by the id of
	// its exec request.
	SignalArgs struct {
		Exec   uint64
		Signal int
	}
	ResizeArgs struct {
		Exec          uint64
		Width, Height uint16
	}
	// ExecInContainerArgs run Process in the running container
	// Container: a terminal when Process.Terminal; Stdin as ExecArgs'.
	// The user must be numeric; the command is looked up in the
	// container's root.
	ExecInContainerArgs struct {
		Container string
		Process   *specs.Process
		Stdin     bool
	}
	// UpdateArgs change a running container's resource limits.
	UpdateArgs struct {
		Container string
		Resources *specs.LinuxResources
	}
	// ContainerArgs name a running container.
	ContainerArgs struct{ Container string }
	// PidsResult lists the processes of a container's cgroup (guest
	// pids).
	PidsResult struct {
		Pids []int
		Init int // the container's init (0 when the runtime cannot tell)
	}
	// NetworkArgs configure the guest's network (its root network
	// namespace, the one a pod's containers share): each card, found by
	// its MAC, gets its MTU and addresses (CIDR) and is brought up, with
	// loopback; then the routes (an empty Dst is the default route).
	NetworkArgs struct {
		Interfaces []NetInterface
		Routes     []NetRoute
		Neighbors  []NetNeighbor // permanent entries
		// Sysctls are the pod's network sysctls ("net.ipv4.ip_forward"):
		// only net.* keys, set in the guest's network namespace.
		Sysctls map[string]string
	}
	NetNeighbor  struct{ IP, MAC string }
	NetInterface struct {
		MAC   string
		MTU   int
		Addrs []string
	}
	NetRoute struct{ Dst, Gw string }
	// CgroupStatsResult holds a container's cgroup v2 statistics files
	// ("memory.stat", "cpu.stat", ...) as the guest kernel wrote them;
	// files the kernel lacks are absent.
	CgroupStatsResult struct{ Files map[string]string }

	ExecResult struct {
		ExitCode int
		// OOMKilled: the kernel's OOM killer killed a process of the
		// container (its cgroup's oom_kill count rose) while it ran.
		OOMKilled bool `json:",omitempty"`
	}
	StatResult struct {
		Mode  uint32
		Size  int64
		IsDir bool
		Link  string
	}
	ListResult struct{ Names []string }
	// IdentityArgs make a VM restored from a template its own machine:
	// host randomness credited to the guest RNG and a forced CRNG reseed,
	// the wall clock, and the hostname.
	IdentityArgs struct {
		Seed     []byte // 32 to 512 bytes of host randomness
		UnixNano int64
		Hostname string
	}
	// IdentityResult is what the guest reads back after applying them.
	IdentityResult struct {
		Hostname string
		UnixNano int64  // the guest's wall clock just after setting it
		BootID   string // /proc/sys/kernel/random/boot_id: shared by clones
		Random   []byte // 16 bytes drawn from the reseeded RNG
	}
)

// WriteFrame writes one message.
func WriteFrame(w io.Writer, m *Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > MaxMessage {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(b), MaxMessage)
	}
	buf := make([]byte, 8+len(b))
	copy(buf, magic[:])
	binary.BigEndian.PutUint32(buf[4:], uint32(len(b)))
	copy(buf[8:], b)
	_, err = w.Write(buf)
	return err
}

// ErrTooLarge is returned by ReadFrame for a frame over MaxMessage; the
// next ReadFrame looks for the following frame start.
var ErrTooLarge = errors.New("agent frame exceeds the maximum message size")

// ErrMalformed is returned by ReadFrame for a frame that is not valid JSON.
var ErrMalformed = errors.New("malformed agent frame")

// ReadFrame reads the next message, skipping bytes until a frame start.
func ReadFrame(r *bufio.Reader) (*Message, error) {
	matched := 0
	for matched < 4 {
		c, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		switch {
		case c == magic[matched]:
			matched++
		case c == magic[0]:
			matched = 1
		default:
			matched = 0
		}
	}
	var lb [4]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(lb[:])
	if n > MaxMessage {
		// A length we refuse may be garbage too: do not trust it to skip;
		// resynchronise on the next frame start instead.
		return nil, ErrTooLarge
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	var m Message
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &m, nil
}
