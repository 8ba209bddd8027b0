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
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layervisor/layervisor/internal/testutil"
)

// Frames cross between the CNI interface and the tap both ways: the
// node's ARP request for the pod's address comes out of the tap, and a
// reply written into the tap reaches the node, which learns the pod's MAC.
func TestWireRedirectsBothWays(t *testing.T) {
	podNS, node := testutil.NetnsPair(t)
	l, err := Wire(podNS)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unwire()
	if l.Iface.Name != "eth0" || l.Iface.MTU != 1500 || len(l.Iface.MAC) != 6 {
		t.Errorf("interface: %+v", l.Iface)
	}
	if len(l.Iface.Addrs) != 1 || l.Iface.Addrs[0] != netip.MustParsePrefix(testutil.PodAddr+"/24") {
		t.Errorf("addresses: %v", l.Iface.Addrs)
	}
	if len(l.Routes) != 1 || l.Routes[0].Dst.IsValid() || l.Routes[0].Gw != netip.MustParseAddr(testutil.NodeAddr) {
		t.Errorf("routes: %+v", l.Routes)
	}

	natRules := func() string {
		out, _ := exec.Command("nsenter", "--net="+podNS, "iptables", "-w", "-t", "nat", "-S").CombinedOutput()
		return string(out)
	}
	if r := natRules(); !strings.Contains(r, "--to-destination "+GuestSide.Addr().String()) || !strings.Contains(r, "--to-source "+HostSide.Addr().String()) {
		t.Errorf("no side door rules: %s", r)
	}

	// The node asks who has 10.99.0.2 (a UDP datagram sent there makes
	// it resolve the address).
	go exec.Command("ip", "netns", "exec", node, "bash", "-c", "for i in 1 2 3; do echo x >/dev/udp/10.99.0.2/9; sleep 1; done").Run()
	frame := readFrame(t, l.Tap, func(f []byte) bool {
		return len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0806 && bytes.Equal(f[38:42], []byte{10, 99, 0, 2})
	})
	nodeMAC := net.HardwareAddr(frame[6:12])

	// Answer from the tap as the guest would, with the pod's MAC.
	reply := make([]byte, 42)
	copy(reply[0:], nodeMAC)
	copy(reply[6:], l.Iface.MAC)
	binary.BigEndian.PutUint16(reply[12:], 0x0806)
	copy(reply[14:], []byte{0, 1, 8, 0, 6, 4, 0, 2}) // Ethernet/IPv4, reply
	copy(reply[22:], l.Iface.MAC)
	copy(reply[28:], []byte{10, 99, 0, 2})
	copy(reply[32:], nodeMAC)
	copy(reply[38:], []byte{10, 99, 0, 1})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := l.Tap.Write(reply); err != nil {
			t.Fatalf("write to the tap: %v", err)
		}
		out, _ := exec.Command("ip", "-n", node, "neigh", "show", "10.99.0.2").CombinedOutput()
		if strings.Contains(string(out), l.Iface.MAC.String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node did not learn the pod's MAC %s from the tap: %q", l.Iface.MAC, out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The side door: a datagram from the guest to HostSide stays in the
	// namespace (is not redirected to eth0).
	var conn *net.UDPConn
	if err := inNetNS(podNS, func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IP(HostSide.Addr().AsSlice()), Port: 7777})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := l.Tap.Write(udpFrame(l.TapMAC, l.Iface.MAC, GuestSide.Addr(), HostSide.Addr(), 7777, []byte("knock"))); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if n, from, err := conn.ReadFromUDP(buf); err != nil || string(buf[:n]) != "knock" {
		t.Errorf("side door: %q from %v, %v", buf[:n], from, err)
	}
	// Only HostSide is let in: a guest that forges a datagram to
	// 127.0.0.1 (route_localnet is on in the namespace) reaches nothing
	// listening on the namespace's loopback; the frame goes to eth0.
	var lo *net.UDPConn
	if err := inNetNS(podNS, func() (err error) {
		lo, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7778})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer lo.Close()
	for i := 0; i < 3; i++ {
		if _, err := l.Tap.Write(udpFrame(l.TapMAC, l.Iface.MAC, GuestSide.Addr(), netip.MustParseAddr("127.0.0.1"), 7778, []byte("forged"))); err != nil {
			t.Fatal(err)
		}
	}
	lo.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, from, err := lo.ReadFromUDP(buf); err == nil {
		t.Errorf("a datagram from the guest to 127.0.0.1 reached the pod namespace's loopback: %q from %v", buf[:n], from)
	}

	if err := l.Unwire(); err != nil {
		t.Fatal(err)
	}
	if r := natRules(); strings.Contains(r, GuestSide.Addr().String()) {
		t.Errorf("side door rules left: %s", r)
	}
	out, _ := exec.Command("tc", "-n", strings.TrimPrefix(podNS, "/var/run/netns/"), "qdisc", "show", "dev", "eth0").CombinedOutput()
	if strings.Contains(string(out), "ingress") {
		t.Errorf("the ingress redirect is left on eth0: %s", out)
	}
	out, _ = exec.Command("ip", "-n", strings.TrimPrefix(podNS, "/var/run/netns/"), "link", "show", TapName).CombinedOutput()
	if !strings.Contains(string(out), "does not exist") {
		t.Errorf("the tap outlives its last queue: %s", out)
	}
	if err := l.Unwire(); err != nil {
		t.Errorf("second unwire: %v", err)
	}
}

// readFrame reads frames from the tap until want accepts one.
func readFrame(t *testing.T, tap *os.File, want func([]byte) bool) []byte {
	t.Helper()
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := tap.Read(buf)
			if err != nil {
				close(got)
				return
			}
			if want(buf[:n]) {
				got <- append([]byte(nil), buf[:n]...)
				return
			}
		}
	}()
	select {
	case f, ok := <-got:
		if !ok {
			t.Fatal("tap closed")
		}
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no ARP request for the pod's address came out of the tap")
	}
	return nil
}

// A namespace without a CNI interface, or none at all, is a clear error
// and leaves no tap.
func TestWireBadNamespace(t *testing.T) {
	testutil.NeedRoot(t)
	name := fmt.Sprintf("lvpn-empty-%d", time.Now().UnixNano()%1e9)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	_, err := Wire(filepath.Join("/var/run/netns", name))
	if err == nil || !strings.Contains(err.Error(), "want exactly one interface besides loopback") || !strings.Contains(err.Error(), name) {
		t.Errorf("empty namespace: %v", err)
	}
	out, _ := exec.Command("ip", "-n", name, "link").CombinedOutput()
	if strings.Contains(string(out), TapName) {
		t.Errorf("tap left: %s", out)
	}
	if _, err := Wire("/var/run/netns/no-such-ns-lv"); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing namespace: %v", err)
	}
}

// udpFrame is an Ethernet frame holding an IPv4 UDP datagram.
func udpFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, port uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:], dstMAC)
	copy(f[6:], srcMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17 // version 4, 20 bytes; TTL; UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	copy(ip[12:], src.AsSlice())
	copy(ip[16:], dst.AsSlice())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := f[34:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload))) // checksum 0: none
	copy(udp[8:], payload)
	return f
}
