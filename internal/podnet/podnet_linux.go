// Package podnet connects a pod's network namespace, as CNI set it up, to
// a utility VM's network card, the way Kata's "tcfilter" model does: a tap
// device beside the CNI interface in the namespace, and tc mirred filters
// on both ingress queues redirecting every frame from one to the other.
// The guest's card takes the CNI interface's MAC, addresses and routes, so
// the pod keeps the identity CNI gave it (and that portmap and peers know).
//
// One more path is needed for CRI's port forwarding, which dials
// localhost:PORT inside the pod's namespace on the host, where nothing
// listens: a side door. The tap also holds HostSide, the guest's card also
// GuestSide (a link-local /30 of their own), frames to HostSide stay in
// the namespace instead of being redirected, and a DNAT rule sends the
// namespace's connections to 127.0.0.1 on to GuestSide.
package podnet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TapName is the tap device's name in the pod's namespace.
const TapName = "lvtap0"

// The side door's addresses: the tap's (in the pod's namespace) and the
// guest card's second one.
var (
	HostSide  = netip.MustParsePrefix("169.254.231.1/30")
	GuestSide = netip.MustParsePrefix("169.254.231.2/30")
)

// Interface is the CNI interface the guest's card impersonates.
type Interface struct {
	Name  string // in the pod's namespace (eth0)
	MAC   net.HardwareAddr
	MTU   int
	Addrs []netip.Prefix
}

// Route is one route of the pod (Dst invalid: the default route).
type Route struct {
	Dst netip.Prefix
	Gw  netip.Addr
}

// Link is a wired pod network: Tap is the tap device's queue, for the VM.
// The guest must answer GuestSide and know TapMAC as HostSide's.
type Link struct {
	NetNS  string
	Iface  Interface
	Routes []Route
	Tap    *os.File
	TapMAC net.HardwareAddr
}

// Wire finds the pod's one CNI interface in the network namespace at
// nsPath, creates the tap device beside it and redirects each one's
// ingress to the other. The tap is not persistent: it disappears when the
// last holder of its queue (the VM) closes it.
func Wire(nsPath string) (*Link, error) {
	l := &Link{NetNS: nsPath}
	err := inNetNS(nsPath, func() error {
		iface, routes, err := cniInterface()
		if err != nil {
			return err
		}
		l.Iface, l.Routes = iface, routes
		tap, err := openTap(TapName)
		if err != nil {
			return err
		}
		if l.TapMAC, err = redirect(iface, TapName); err != nil {
			tap.Close()
			return err
		}
		l.Tap = tap
		return nil
	})
	if err == nil {
		err = sideDoor(nsPath, "-A")
		if err != nil {
			l.Tap.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pod network %s: %w", nsPath, err)
	}
	return l, nil
}

// sideDoor adds (-A) or deletes (-D) the rules that send the namespace's
// own TCP connections to 127.0.0.1 to the guest, from HostSide (a
// loopback source cannot leave the namespace; route_localnet lets the
// rewritten packet be routed at all).
func sideDoor(nsPath, op string) error {
	var errs []error
	for _, rule := range [][]string{
		{"-t", "nat", op, "OUTPUT", "-d", "127.0.0.1/32", "-p", "tcp", "-j", "DNAT", "--to-destination", GuestSide.Addr().String()},
		{"-t", "nat", op, "POSTROUTING", "-o", TapName, "-d", GuestSide.Addr().String(), "-j", "SNAT", "--to-source", HostSide.Addr().String()},
	} {
		args := append([]string{"--net=" + nsPath, "iptables", "-w"}, rule...)
		if out, err := exec.Command("nsenter", args...).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("iptables %s: %w: %s", strings.Join(rule, " "), err, bytes.TrimSpace(out)))
		}
	}
	if op == "-A" {
		if out, err := exec.Command("nsenter", "--net="+nsPath, "sh", "-c", "echo 1 >/proc/sys/net/ipv4/conf/all/route_localnet").CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("route_localnet: %w: %s", err, bytes.TrimSpace(out)))
		}
	}
	return errors.Join(errs...)
}

// Unwire removes the redirection from the CNI interface (the tap goes
// with its last queue) and closes the shim's queue. A namespace already
// gone is not an error: CNI's teardown got there first.
func (l *Link) Unwire() error {
	if l.Tap != nil {
		l.Tap.Close()
		l.Tap = nil
	}
	if _, err := os.Stat(l.NetNS); err == nil {
		sideDoor(l.NetNS, "-D") // best effort: gone with the namespace anyway
	}
	err := inNetNS(l.NetNS, func() error {
		link, err := netlink.LinkByName(l.Iface.Name)
		if err != nil {
			return nil // the veth went with CNI DEL
		}
		q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: netlink.MakeHandle(0xffff, 0)}}
		if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("remove the ingress redirect of %s: %w", l.Iface.Name, err)
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// inNetNS runs f on an OS thread in the network namespace at path. The
// thread is thrown away after (never unlocked), so no goroutine ever runs
// in the pod's namespace by accident.
func inNetNS(path string, f func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread ends with the goroutine
		if err := netns.Set(target); err != nil {
			done <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		done <- f()
	}()
	return <-done
}

// cniInterface finds the namespace's one interface other than loopback
// and the tap, with its IPv4/IPv6 addresses and the routes through it.
func cniInterface() (Interface, []Route, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return Interface{}, nil, fmt.Errorf("list interfaces: %w", err)
	}
	var found []netlink.Link
	for _, link := range links {
		a := link.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.Name == TapName {
			continue
		}
		found = append(found, link)
	}
	if len(found) != 1 {
		names := make([]string, len(found))
		for i, l := range found {
			names[i] = l.Attrs().Name
		}
		return Interface{}, nil, fmt.Errorf("want exactly one interface besides loopback (the CNI one), found %d %v", len(found), names)
	}
	link := found[0]
	a := link.Attrs()
	if len(a.HardwareAddr) != 6 {
		return Interface{}, nil, fmt.Errorf("interface %s has no Ethernet address (type %s): only Ethernet-like CNI interfaces can be bridged to a VM", a.Name, link.Type())
	}
	iface := Interface{Name: a.Name, MAC: a.HardwareAddr, MTU: a.MTU}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return Interface{}, nil, fmt.Errorf("addresses of %s: %w", a.Name, err)
	}
	for _, ad := range addrs {
		if ad.IP.IsLinkLocalUnicast() {
			continue // the guest's kernel makes its own
		}
		ip, ok := netip.AddrFromSlice(ad.IP)
		if !ok {
			continue
		}
		ones, _ := ad.Mask.Size()
		iface.Addrs = append(iface.Addrs, netip.PrefixFrom(ip.Unmap(), ones))
	}
	if len(iface.Addrs) == 0 {
		return Interface{}, nil, fmt.Errorf("interface %s has no address (did the CNI plugin run?)", a.Name)
	}
	rs, err := netlink.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return Interface{}, nil, fmt.Errorf("routes of %s: %w", a.Name, err)
	}
	var routes []Route
	for _, r := range rs {
		if r.Gw == nil && r.Dst != nil && onLink(r.Dst, iface.Addrs) {
			continue // a prefix route: the guest's kernel adds it with the address
		}
		var rt Route
		if r.Dst != nil {
			ip, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			rt.Dst = netip.PrefixFrom(ip.Unmap(), ones)
			if ones == 0 {
				rt.Dst = netip.Prefix{}
			}
		}
		if r.Gw != nil {
			rt.Gw, _ = netip.AddrFromSlice(r.Gw)
			rt.Gw = rt.Gw.Unmap()
		}
		routes = append(routes, rt)
	}
	return iface, routes, nil
}

// onLink tells the routes the kernel makes for an address: its prefix,
// and IPv6's link-local one.
func onLink(dst *net.IPNet, addrs []netip.Prefix) bool {
	if dst.IP.IsLinkLocalUnicast() {
		return true
	}
	ip, ok := netip.AddrFromSlice(dst.IP)
	ones, _ := dst.Mask.Size()
	if !ok {
		return false
	}
	for _, a := range addrs {
		if a.Masked() == netip.PrefixFrom(ip.Unmap(), ones) {
			return true
		}
	}
	return false
}

// openTap creates a tap device (no packet information header) and returns
// its one queue.
func openTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// redirect brings the tap up with the interface's MTU and the side door's
// address, and mirrors each device's ingress to the other's egress, but
// for frames to the side door. It returns the tap's MAC.
func redirect(iface Interface, tapName string) (net.HardwareAddr, error) {
	eth, err := netlink.LinkByName(iface.Name)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface.Name, err)
	}
	tap, err := netlink.LinkByName(tapName)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", tapName, err)
	}
	if iface.MTU > 0 {
		if err := netlink.LinkSetMTU(tap, iface.MTU); err != nil {
			return nil, fmt.Errorf("set the MTU of %s: %w", tapName, err)
		}
	}
	if err := netlink.AddrAdd(tap, &netlink.Addr{IPNet: prefixNet(HostSide)}); err != nil {
		return nil, fmt.Errorf("side door address on %s: %w", tapName, err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return nil, fmt.Errorf("bring %s up: %w", tapName, err)
	}
	// The guest's card answers GuestSide with the CNI interface's MAC;
	// neither side asks (ARP would be redirected away).
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: tap.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: net.IP(GuestSide.Addr().AsSlice()), HardwareAddr: iface.MAC}); err != nil {
		return nil, fmt.Errorf("side door neighbour on %s: %w", tapName, err)
	}
	for _, q := range []netlink.Link{eth, tap} {
		if err := netlink.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: q.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: netlink.MakeHandle(0xffff, 0)}}); err != nil {
			return nil, fmt.Errorf("ingress queue on %s: %w", q.Attrs().Name, err)
		}
	}
	// Frames from the guest to the side door stay here: the first filter
	// to match decides, and one with a class and no action lets the frame
	// pass (no "gact" action module needed: not every kernel has it).
	hostSide := binary.BigEndian.Uint32(HostSide.Addr().AsSlice())
	stay := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: tap.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0), Priority: 1, Protocol: unix.ETH_P_IP},
		ClassId:     netlink.MakeHandle(1, 1),
		Sel: &netlink.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Nkeys: 1,
			Keys: []netlink.TcU32Key{{Mask: 0xffffffff, Val: hostSide, Off: 16}}}, // IPv4 destination
	}
	if err := netlink.FilterAdd(stay); err != nil {
		return nil, fmt.Errorf("side door filter on %s: %w", tapName, err)
	}
	for _, p := range [][2]netlink.Link{{eth, tap}, {tap, eth}} {
		from, to := p[0].Attrs(), p[1].Attrs()
		f := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Index, Parent: netlink.MakeHandle(0xffff, 0), Priority: 2, Protocol: unix.ETH_P_ALL},
			Actions: []netlink.Action{&netlink.MirredAction{
				ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
				MirredAction: netlink.TCA_EGRESS_REDIR,
				Ifindex:      to.Index,
			}},
		}
		if err := netlink.FilterAdd(f); err != nil {
			return nil, fmt.Errorf("redirect %s to %s: %w", from.Name, to.Name, err)
		}
	}
	return tap.Attrs().HardwareAddr, nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
