package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/layervisor/layervisor/pkg/agent"
)

// cardWait bounds the wait for a hot-plugged card to appear: the guest's
// PCI hotplug and driver probe take a while under TCG.
const cardWait = 30 * time.Second

// configureNetwork brings loopback up, gives each card its MTU and
// addresses and brings it up, then adds the routes.
func configureNetwork(ctx context.Context, a agent.NetworkArgs) error {
	invalid := func(format string, args ...any) error {
		return &agent.Error{Code: agent.CodeInvalid, Message: fmt.Sprintf(format, args...)}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring loopback up: %w", err)
	}
	var cards []netlink.Link
	for _, in := range a.Interfaces {
		mac, err := net.ParseMAC(in.MAC)
		if err != nil || len(mac) != 6 {
			return invalid("card MAC %q: want an Ethernet address", in.MAC)
		}
		if in.MTU != 0 && (in.MTU < 68 || in.MTU > 65535) {
			return invalid("card %s: MTU %d out of range", in.MAC, in.MTU)
		}
		var addrs []*netlink.Addr
		for _, s := range in.Addrs {
			ad, err := netlink.ParseAddr(s)
			if err != nil {
				return invalid("card %s: address %q: %v", in.MAC, s, err)
			}
			addrs = append(addrs, ad)
		}
		link, err := waitCard(ctx, mac)
		if err != nil {
			return err
		}
		cards = append(cards, link)
		if in.MTU != 0 {
			if err := netlink.LinkSetMTU(link, in.MTU); err != nil {
				return fmt.Errorf("card %s: set MTU %d: %w", in.MAC, in.MTU, err)
			}
		}
		for _, ad := range addrs {
			if err := netlink.AddrReplace(link, ad); err != nil {
				return fmt.Errorf("card %s: address %s: %w", in.MAC, ad, err)
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("card %s: bring up: %w", in.MAC, err)
		}
	}
	for _, n := range a.Neighbors {
		ip, mac := net.ParseIP(n.IP), mac48(n.MAC)
		if ip == nil || mac == nil || len(cards) != 1 {
			return invalid("neighbour %q at %q: want an address and an Ethernet address, with one card", n.IP, n.MAC)
		}
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: cards[0].Attrs().Index, State: netlink.NUD_PERMANENT, IP: ip, HardwareAddr: mac}); err != nil {
			return fmt.Errorf("neighbour %s: %w", n.IP, err)
		}
	}
	if err := setNetSysctls(a.Sysctls); err != nil {
		return err
	}
	for _, r := range a.Routes {
		rt := &netlink.Route{}
		if r.Dst != "" {
			_, dst, err := net.ParseCIDR(r.Dst)
			if err != nil {
				return invalid("route to %q: %v", r.Dst, err)
			}
			rt.Dst = dst
		}
		if r.Gw != "" {
			if rt.Gw = net.ParseIP(r.Gw); rt.Gw == nil {
				return invalid("route to %q: gateway %q is not an address", r.Dst, r.Gw)
			}
		}
		if rt.Gw == nil && rt.Dst == nil {
			return invalid("a route needs a destination or a gateway")
		}
		if err := netlink.RouteReplace(rt); err != nil {
			return fmt.Errorf("route to %q via %q: %w", r.Dst, r.Gw, err)
		}
	}
	return nil
}

func mac48(s string) net.HardwareAddr {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil
	}
	return mac
}

// waitCard finds the card with the MAC, waiting for it to appear.
func waitCard(ctx context.Context, mac net.HardwareAddr) (netlink.Link, error) {
	ctx, cancel := context.WithTimeout(ctx, cardWait)
	defer cancel()
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list network cards: %w", err)
		}
		for _, l := range links {
			if bytes.Equal(l.Attrs().HardwareAddr, mac) && l.Attrs().Flags&net.FlagLoopback == 0 {
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, &agent.Error{Code: agent.CodeNotFound, Message: fmt.Sprintf("no network card with MAC %s appeared within %s", mac, cardWait)}
			}
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// setNetSysctls writes network sysctls: the guest's network namespace is
// the pod's. Keys outside net.* (the kernel's, not the pod's) are refused.
func setNetSysctls(kv map[string]string) error {
	for k, v := range kv {
		if !strings.HasPrefix(k, "net.") || strings.Contains(k, "/") || strings.Contains(k, "..") || strings.ContainsAny(v, "\n") {
			return &agent.Error{Code: agent.CodeInvalid, Message: fmt.Sprintf("sysctl %q=%q: only net.* keys are set for a pod", k, v)}
		}
		p := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
		}
	}
	return nil
}
