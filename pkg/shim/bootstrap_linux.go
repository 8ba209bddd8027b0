// Package shim is containerd's runtime v2 shim for layervisor's utility
// VMs: the binary containerd-shim-layervisor-v1 (runtime type
// io.containerd.layervisor.v1). Each task gets a shim process and a
// utility VM of its own, except that containers annotated with one group
// (io.kubernetes.cri.sandbox-id, as containerd's runc shim groups a pod)
// share one shim and one VM. The container's root file system is the layer
// images behind the layervisor snapshotter's mount, attached to the VM (never
// mounted on the host), over a fresh scratch; a plain overlay snapshot
// (containerd's overlayfs snapshotter) is mounted on the host and shared
// into the VM through virtiofs instead. The container runs in the guest
// with the guest's OCI runtime.
//
// One binary serves containerd 2.x and Debian's containerd 1.6: the start
// and delete actions are layervisor's own (containerd 2.4's pkg/shim
// refuses 1.6's start protocol), and the task service is containerd.task.v2
// over ttrpc, which both speak (2.x through its v2 bridge).
package shim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/layervisor/layervisor/pkg/uvm"
)

// RuntimeName is the runtime type containerd maps to this binary.
const RuntimeName = "io.containerd.layervisor.v1"

// BinaryName is the binary containerd looks for in PATH.
const BinaryName = "containerd-shim-layervisor-v1"

// RootEnv names the layervisor store root the shim uses (default
// DefaultRoot): layers, scratch templates, UVM state and templates.
const RootEnv = "LAYERVISOR_ROOT"

// DefaultRoot is the store root when RootEnv is not set.
const DefaultRoot = "/var/lib/layervisor"

// SocketDir holds the shims' ttrpc sockets.
const SocketDir = "/run/layervisor/s"

// Version is what -v prints.
var Version = "dev"

// options are the command line containerd passes: the legacy flags of
// both 1.6 and 2.x, then an action (start, delete; serve is internal).
type options struct {
	namespace, address, publishBinary, id, bundle, socket string
	debug                                                 bool
	action                                                string
}

func parseArgs(args []string, stderr io.Writer) (options, bool, error) {
	var o options
	fs := flag.NewFlagSet(BinaryName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.namespace, "namespace", "", "containerd namespace")
	fs.StringVar(&o.address, "address", "", "containerd's gRPC address")
	fs.StringVar(&o.publishBinary, "publish-binary", "", "containerd binary (event publishing)")
	fs.StringVar(&o.id, "id", "", "task id")
	fs.StringVar(&o.bundle, "bundle", "", "bundle path (delete)")
	fs.StringVar(&o.socket, "socket", "", "ttrpc socket (internal: the serving daemon's)")
	fs.BoolVar(&o.debug, "debug", false, "debug logging")
	version := fs.Bool("v", false, "print the version and exit")
	info := fs.Bool("info", false, "print runtime information and exit")
	if err := fs.Parse(args); err != nil {
		return o, false, err
	}
	if *version || *info {
		return o, true, nil
	}
	o.action = fs.Arg(0)
	return o, false, nil
}

// Main runs the shim binary with args (without the program name) and
// returns its exit code. vm configures the utility VMs it makes and reaps
// (its command fills it from the environment; ID and Root are set here).
func Main(args []string, vm uvm.Config) int {
	o, printVersion, err := parseArgs(args, os.Stderr)
	if err != nil {
		return 2
	}
	if printVersion {
		if err := printInfo(args, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", BinaryName, err)
			return 1
		}
		return 0
	}
	ctx := context.Background()
	switch o.action {
	case "start":
		err = startAction(ctx, o, os.Stdin, os.Stdout)
	case "delete":
		err = deleteAction(ctx, o, os.Stdout, vm.Host)
	case "serve":
		err = serveAction(ctx, o, vm)
	default:
		err = fmt.Errorf("unknown action %q: want start or delete", o.action)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s %s: %v\n", BinaryName, o.action, err)
		return 1
	}
	return 0
}

// printInfo answers -v (text) and -info (a RuntimeInfo protobuf, what
// containerd 2.x reads to learn a runtime's features).
func printInfo(args []string, stdout io.Writer) error {
	if !slices.Contains(args, "-info") && !slices.Contains(args, "--info") {
		_, err := fmt.Fprintf(stdout, "%s:\n  Version: %s\n  Runtime: %s\n", BinaryName, Version, RuntimeName)
		return err
	}
	feat, err := typeurl.MarshalAnyToProto(guestFeatures())
	if err != nil {
		return fmt.Errorf("runtime features: %w", err)
	}
	b, err := proto.Marshal(&apitypes.RuntimeInfo{Name: RuntimeName, Version: &apitypes.RuntimeVersion{Version: Version}, Features: feat})
	if err != nil {
		return err
	}
	_, err = stdout.Write(b)
	return err
}

// storeRoot is the layervisor root the shim works in.
func storeRoot() string {
	if r := os.Getenv(RootEnv); r != "" {
		return r
	}
	return DefaultRoot
}

// uvmID names the UVM of task id in namespace ns: a hash, so any
// containerd id (up to 76 characters, any namespace) makes a valid,
// short UVM id, and two namespaces never share one.
func uvmID(ns, id string) string {
	h := sha256.Sum256([]byte(ns + "/" + id))
	return "ctrd-" + hex.EncodeToString(h[:10])
}

// socketPath is the shim's ttrpc socket for task id: short (unix socket
// names are bounded to 108 bytes) and distinct per containerd, namespace
// and id.
func socketPath(address, ns, id string) string {
	h := sha256.Sum256([]byte(address + "\x00" + ns + "\x00" + id))
	return filepath.Join(SocketDir, hex.EncodeToString(h[:16])+".sock")
}

// readBootstrap reads containerd 2.3+'s BootstrapParams from stdin. 1.6
// gives nothing (or the runtime options, which do not name the task), so
// ok is false for it.
func readBootstrap(stdin io.Reader, id string) (p *bootapi.BootstrapParams, ok bool) {
	if f, isFile := stdin.(*os.File); isFile {
		fi, err := f.Stat()
		if err != nil || fi.Mode()&os.ModeCharDevice != 0 {
			return nil, false // /dev/null or a terminal: nothing to read
		}
	}
	data, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
	if err != nil || len(data) == 0 {
		return nil, false
	}
	p = &bootapi.BootstrapParams{}
	if err := proto.Unmarshal(data, p); err != nil || p.InstanceID != id {
		return nil, false
	}
	return p, true
}

// startAction starts the serving shim daemon for the task and prints its
// address the way the calling containerd expects: a BootstrapResult
// (protobuf) to a containerd that sent BootstrapParams, else the plain
// address (containerd 1.6; 2.x accepts it too).
func startAction(ctx context.Context, o options, stdin io.Reader, stdout io.Writer) (err error) {
	if o.id == "" || o.namespace == "" {
		return errors.New("-id and -namespace are required")
	}
	params, bootstrap := readBootstrap(stdin, o.id)
	ns, ttrpcAddr := o.namespace, os.Getenv("TTRPC_ADDRESS")
	if bootstrap {
		if params.Namespace != "" {
			ns = params.Namespace
		}
		if params.ContainerdTtrpcAddress != "" {
			ttrpcAddr = params.ContainerdTtrpcAddress
		}
	}
	// Containers of one group (a pod) share a shim and its UVM: the
	// socket is the group's, and a group whose shim serves already gets
	// its address (containerd's runc shim does the same).
	group := bundleGrouping(o.id, ".")
	sock := socketPath(o.address, ns, group)
	address := "unix://" + sock
	// Root only: whoever reaches a shim's socket drives its VMs.
	if err := os.MkdirAll(SocketDir, 0o700); err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if err := os.Chmod(SocketDir, 0o700); err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	// One start at a time: two containers of a new group must not both
	// start a shim.
	unlock, err := lockDir(SocketDir)
	if err != nil {
		return err
	}
	defer unlock()
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		slog.DebugContext(ctx, "joining the shim of the group", "id", o.id, "group", group, "socket", sock)
		return reply(stdout, address, bootstrap)
	}
	os.Remove(sock) // a dead shim's
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	l.SetUnlinkOnClose(false) // the daemon serves it from now on
	lf, err := l.File()
	l.Close()
	if err != nil {
		os.Remove(sock)
		return fmt.Errorf("listener of %s: %w", sock, err)
	}
	defer lf.Close()
	defer func() {
		if err != nil {
			os.Remove(sock)
		}
	}()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"-namespace", ns, "-id", group, "-address", o.address, "-publish-binary", o.publishBinary, "-socket", sock}
	if o.debug || (bootstrap && params.LogLevel < bootapi.LogLevel_LOG_LEVEL_INFO) {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, append(args, "serve")...)
	cmd.Dir, _ = os.Getwd() // the bundle
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Env = append(os.Environ(), "TTRPC_ADDRESS="+ttrpcAddr, "NAMESPACE="+ns)
	// A session of its own: the daemon outlives this process and is no
	// part of containerd's process group. Its stdio is /dev/null (start's
	// caller reads our output to EOF).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start shim daemon: %w", err)
	}
	pid := cmd.Process.Pid
	cmd.Process.Release()
	if err := reply(stdout, address, bootstrap); err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		return err
	}
	return nil
}

// reply writes the address file and prints the address the way the
// calling containerd expects.
func reply(stdout io.Writer, address string, bootstrap bool) error {
	if err := os.WriteFile("address", []byte(address), 0o600); err != nil {
		return fmt.Errorf("write address file: %w", err)
	}
	if !bootstrap {
		_, err := io.WriteString(stdout, address)
		return err
	}
	b, err := proto.Marshal(&bootapi.BootstrapResult{Version: 2, Address: address, Protocol: "ttrpc"})
	if err != nil {
		return err
	}
	_, err = stdout.Write(b)
	return err
}

// lockDir holds an exclusive flock on dir until unlock.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// deleteAction cleans up after a task whose shim connection closed (the
// shim died, its start failed, or containerd let go of a deleted task): a
// group's shim that still answers is asked to delete the task (it keeps
// the VM for the others, and exits when it was the last); otherwise the
// group's UVM is reaped (its owner killed if it lingers; QEMU, virtiofsd,
// state directory, the containers' scratch) and its socket removed. It
// prints the task.v2 DeleteResponse containerd expects.
func deleteAction(ctx context.Context, o options, stdout io.Writer, h uvm.HostOptions) error {
	if o.id == "" || o.namespace == "" {
		return errors.New("-id and -namespace are required")
	}
	resp := &taskv2.DeleteResponse{ExitedAt: timestamppb.Now(), ExitStatus: 128 + uint32(syscall.SIGKILL)}
	bundle := o.bundle // 2.x passes it; the working directory is it too
	if bundle == "" {
		bundle = "."
	}
	group := bundleGrouping(o.id, bundle)
	sock := socketPath(o.address, o.namespace, group)
	if r, alive := deleteInShim(ctx, sock, o.id); alive {
		// The group's shim serves other containers: it keeps its VM.
		if r != nil {
			resp = r
		}
	} else {
		root, id := storeRoot(), uvmID(o.namespace, group)
		if err := reapUVM(ctx, root, id, h); err != nil {
			fmt.Fprintf(os.Stderr, "reap utility VM %s: %v\n", id, err)
		}
		os.Remove(sock)
		// A plain snapshot the shim mounted (containerd unmounts it too
		// when it removes the bundle).
		if err := unmountHostRootfs(filepath.Join(bundle, "rootfs")); err != nil {
			fmt.Fprintf(os.Stderr, "%v\n", err)
		}
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		return err
	}
	_, err = stdout.Write(b)
	return err
}

// deleteInShimTimeout bounds deleteInShim.
const deleteInShimTimeout = 30 * time.Second

// deleteInShim asks the shim serving sock, if it answers, to end and
// delete task id, and to shut down if that was its last. alive is false
// when no shim answers.
func deleteInShim(ctx context.Context, sock, id string) (resp *taskv2.DeleteResponse, alive bool) {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, deleteInShimTimeout)
	defer cancel()
	c := ttrpc.NewClient(conn)
	defer c.Close()
	tc := taskv2.NewTTRPCTaskClient(c)
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = tc.Connect(cctx, &taskv2.ConnectRequest{ID: id})
	ccancel()
	if err != nil {
		return nil, false // not answering: treated as dead
	}
	if _, err := tc.Kill(ctx, &taskv2.KillRequest{ID: id, Signal: uint32(syscall.SIGKILL), All: true}); err == nil {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		tc.Wait(wctx, &taskv2.WaitRequest{ID: id})
		wcancel()
	}
	resp, err = tc.Delete(ctx, &taskv2.DeleteRequest{ID: id})
	if err != nil {
		resp = nil
	}
	tc.Shutdown(ctx, &taskv2.ShutdownRequest{ID: id})
	return resp, true
}

// reapUVM ends the UVM id under root whose shim is gone: its owner, if
// still alive, is killed (its QEMU dies with it), then uvm.Reap reaps it
// as `layervisor gc` would, leaving other UVMs and the templates alone.
func reapUVM(ctx context.Context, root, id string, h uvm.HostOptions) error {
	st, err := uvm.Load(root, id)
	if errors.Is(err, uvm.ErrNotFound) {
		if _, serr := os.Stat(uvm.Dir(root, id)); serr != nil {
			return nil // no UVM was made
		}
	} else if err != nil {
		return err
	} else if st.Owner != nil && st.Owner.Alive() && st.Owner.PID != os.Getpid() {
		slog.InfoContext(ctx, "killing the shim that owns the UVM", "uvm", id, "pid", st.Owner.PID)
		syscall.Kill(st.Owner.PID, syscall.SIGKILL)
		for deadline := time.Now().Add(5 * time.Second); st.Owner.Alive() && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
	}
	_, err = uvm.Reap(ctx, root, id, h)
	return err
}
