package shim

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"

	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/layervisor/layervisor/internal/podnet"
	"github.com/layervisor/layervisor/pkg/agent"
)

// podNIC names the pod's network card in the VM.
const podNIC = "pod"

// guestNamespaces makes the spec's namespace paths, which name host
// namespaces, mean the same in the guest:
//   - /proc/<pid>/ns/<type> of the pod's sandbox task (containerd names
//     it by the pid the shim gave, QEMU's) becomes the same namespace of
//     the sandbox container's init in the guest, so a pod's containers
//     share IPC, UTS and (on request) PID namespaces there;
//   - the network: the pod's network is the guest's own (the VM belongs to
//     the pod), so joining the sandbox's needs no namespace, and a host
//     network namespace (CNI's, for the sandbox), wired by podNetwork, is
//     plugged into the VM as its network card and configured in the guest;
//   - any other host namespace cannot be joined: the container gets one of
//     its own in the guest, and the log says so.
func (s *Service) guestNamespaces(ctx context.Context, sb *sandboxVM, spec *specs.Spec, link *podnet.Link) error {
	l := spec.Linux
	keep := l.Namespaces[:0]
	for _, ns := range l.Namespaces {
		if ns.Path == "" {
			keep = append(keep, ns)
			continue
		}
		pid, file, isProc := procNamespace(ns.Path)
		switch {
		case isProc && pid == sb.pid && ns.Type == specs.NetworkNamespace:
			if err := s.setNetSysctls(ctx, sb, takeNetSysctls(spec)); err != nil {
				return err
			}
			continue
		case isProc && pid == sb.pid:
			init, err := s.sandboxInit(ctx)
			if err != nil {
				return fmt.Errorf("join the pod's %s namespace: %w", ns.Type, err)
			}
			ns.Path = fmt.Sprintf("/proc/%d/ns/%s", init, file)
		case ns.Type == specs.NetworkNamespace && link != nil && link.NetNS == ns.Path:
			if err := s.attachPodNetwork(ctx, sb, link, takeNetSysctls(spec)); err != nil {
				return err
			}
			continue
		case ns.Type == specs.NetworkNamespace && sb.podNet != nil && sb.podNet.NetNS == ns.Path:
			if err := s.setNetSysctls(ctx, sb, takeNetSysctls(spec)); err != nil {
				return err
			}
			continue
		default:
			slog.WarnContext(ctx, "a host namespace cannot be joined in a utility VM: the container gets one of its own in the guest", "type", ns.Type, "path", ns.Path)
			ns.Path = ""
		}
		keep = append(keep, ns)
	}
	l.Namespaces = keep
	return nil
}

// procNamespace splits /proc/<pid>/ns/<file>.
func procNamespace(p string) (pid uint32, file string, ok bool) {
	rest, ok := strings.CutPrefix(filepath.Clean(p), "/proc/")
	if !ok {
		return 0, "", false
	}
	num, file, ok := strings.Cut(rest, "/ns/")
	n, err := strconv.ParseUint(num, 10, 32)
	if !ok || err != nil || strings.Contains(file, "/") {
		return 0, "", false
	}
	return uint32(n), file, true
}

// sandboxInit is the guest pid of the pod's sandbox container's init: the
// task whose id is the group's (CRI's sandbox id).
func (s *Service) sandboxInit(ctx context.Context) (int, error) {
	s.mu.Lock()
	sandbox := s.tasks[s.id]
	s.mu.Unlock()
	if sandbox == nil || !sandbox.created {
		return 0, fmt.Errorf("the pod sandbox %s has no task in this shim: %w", s.id, errdefs.ErrFailedPrecondition)
	}
	// Asked each time: the agent knows the pid without asking crun, and
	// refuses a sandbox that has ended (its pid may name another process
	// by now).
	sandbox.mu.Lock()
	status := sandbox.status
	sandbox.mu.Unlock()
	if status == tasktypes.Status_STOPPED {
		return 0, fmt.Errorf("the pod sandbox %s has exited: %w", s.id, errdefs.ErrFailedPrecondition)
	}
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	pid, err := sandbox.u.Agent().ContainerInit(ctx, sandbox.id)
	if err != nil {
		return 0, fmt.Errorf("the pod sandbox %s is not running: %w: %w", s.id, err, errdefs.ErrFailedPrecondition)
	}
	return pid, nil
}

// podNetwork wires the host network namespace the spec names, if it is
// not the pod's already in the VM (see guestNamespaces), before any VM is
// made: a namespace CNI did not set up is refused first. nil when there
// is none to wire.
func (s *Service) podNetwork(spec *specs.Spec) (*podnet.Link, error) {
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace || ns.Path == "" {
			continue
		}
		s.vmMu.Lock()
		sb := s.vm
		s.vmMu.Unlock()
		if sb != nil {
			if pid, _, ok := procNamespace(ns.Path); ok && pid == sb.pid {
				return nil, nil
			}
			if sb.podNet != nil && sb.podNet.NetNS == ns.Path {
				return nil, nil
			}
		}
		link, err := podnet.Wire(ns.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
		}
		return link, nil
	}
	return nil, nil
}

// attachPodNetwork plugs a wired pod network into the VM: a network card
// with the CNI interface's MAC, given its addresses and routes in the
// guest. A VM has one pod network; it is unwired when the VM ends.
func (s *Service) attachPodNetwork(ctx context.Context, sb *sandboxVM, link *podnet.Link, sysctls map[string]string) error {
	if sb.podNet != nil {
		if sb.podNet.NetNS == link.NetNS {
			return nil
		}
		return fmt.Errorf("network namespace %s: the utility VM is wired to the pod network %s already: %w", link.NetNS, sb.podNet.NetNS, errdefs.ErrInvalidArgument)
	}
	err := sb.u.AddNIC(ctx, podNIC, link.Tap, link.Iface.MAC)
	link.Tap.Close() // QEMU holds its own copy: the tap goes with QEMU
	link.Tap = nil
	if err != nil {
		return err
	}
	args := agent.NetworkArgs{Interfaces: []agent.NetInterface{{MAC: link.Iface.MAC.String(), MTU: link.Iface.MTU}}}
	for _, a := range link.Iface.Addrs {
		args.Interfaces[0].Addrs = append(args.Interfaces[0].Addrs, a.String())
	}
	// The side door CRI's port forwarding comes in by (podnet).
	args.Interfaces[0].Addrs = append(args.Interfaces[0].Addrs, podnet.GuestSide.String())
	args.Neighbors = []agent.NetNeighbor{{IP: podnet.HostSide.Addr().String(), MAC: link.TapMAC.String()}}
	args.Sysctls = sysctls
	for _, r := range link.Routes {
		nr := agent.NetRoute{}
		if r.Dst.IsValid() {
			nr.Dst = r.Dst.String()
		}
		if r.Gw.IsValid() {
			nr.Gw = r.Gw.String()
		}
		args.Routes = append(args.Routes, nr)
	}
	actx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	if err := sb.u.Agent().ConfigureNetwork(actx, args); err != nil {
		return fmt.Errorf("configure the pod network in the guest: %w", err)
	}
	sb.podNet = link
	slog.InfoContext(ctx, "pod network wired into the utility VM", "netns", link.NetNS, "mac", link.Iface.MAC.String(), "addrs", args.Interfaces[0].Addrs)
	return nil
}

// takeNetSysctls removes the spec's network sysctls: a container on the
// pod's network has no network namespace of its own in the guest (the
// runtime would refuse them), so the guest sets them in its own, the
// pod's.
func takeNetSysctls(spec *specs.Spec) map[string]string {
	var out map[string]string
	for k, v := range spec.Linux.Sysctl {
		if strings.HasPrefix(k, "net.") {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
			delete(spec.Linux.Sysctl, k)
		}
	}
	return out
}

// setNetSysctls sets a pod container's network sysctls in the guest.
func (s *Service) setNetSysctls(ctx context.Context, sb *sandboxVM, kv map[string]string) error {
	if len(kv) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	if err := sb.u.Agent().ConfigureNetwork(ctx, agent.NetworkArgs{Sysctls: kv}); err != nil {
		return fmt.Errorf("network sysctls %v: %w", kv, err)
	}
	return nil
}
