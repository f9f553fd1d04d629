package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// hostVethName derives the host end's name from the attachment, so that DEL
// and GC find it without the container's namespace and a retried ADD
// replaces its own leftover rather than leaking it.
func hostVethName(network, containerID, ifname string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifname))
	return "veth" + hex.EncodeToString(sum[:4])
}

// bridgeMAC is a stable, locally administered address for the bridge. A
// bridge whose address was never set takes the lowest address of its ports,
// so the pods' cached gateway MAC would change as pods come and go.
func bridgeMAC(gw netip.Addr) net.HardwareAddr {
	a := gw.As4()
	return net.HardwareAddr{0x0e, 0x77, a[0], a[1], a[2], a[3]}
}

// podMAC derives the pod interface's address from its IPv4 address. A pod
// attached again (a retried ADD) or a new pod given a released address keeps
// the MAC its neighbours have cached for that address, so no stale ARP entry
// blackholes it.
func podMAC(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x0a, 0x58, b[0], b[1], b[2], b[3]}
}

// ensureBridge makes sure the host bridge exists, is up and holds the
// gateway address (gw with the subnet's length). A different address inside
// network (left from an older lease of this host) is replaced; addresses
// outside network belong to someone else and are left alone.
func ensureBridge(h *netlink.Handle, name string, gw netip.Prefix, network netip.Prefix) (netlink.Link, error) {
	br, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("bridge %s: %w", name, err)
		}
		la := netlink.NewLinkAttrs()
		la.Name = name
		la.HardwareAddr = bridgeMAC(gw.Addr())
		la.Flags = net.FlagUp
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		if br, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("bridge %s: %w", name, err)
		}
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("%s exists and is a %s, not a bridge; set \"bridge\" in the network configuration to another name", name, br.Type())
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("bring bridge %s up: %w", name, err)
		}
	}
	addrs, err := h.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: list addresses: %w", name, err)
	}
	have := false
	var errs []error
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		switch {
		case !ok:
		case p == gw:
			have = true
		case network.Contains(p.Addr()):
			if err := h.AddrDel(br, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				errs = append(errs, fmt.Errorf("bridge %s: remove stale address %s: %w", name, p, err))
			}
		}
	}
	if !have {
		addr := &netlink.Addr{IPNet: ipNet(gw)}
		if err := h.AddrAdd(br, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("bridge %s: add gateway address %s: %w", name, gw, err))
		}
	}
	return br, errors.Join(errs...)
}

// ensureForwarding turns on IPv4 forwarding in the current namespace: the
// bridge routes the pods' traffic.
func ensureForwarding() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	b, err := os.ReadFile(path)
	if err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	return nil
}

// vethSpec describes a pod's veth pair.
type vethSpec struct {
	hostName  string
	ifName    string // the name inside the container
	mtu       int
	bridge    netlink.Link
	hairpin   bool
	container int              // fd of the container's network namespace
	mac       net.HardwareAddr // the container end's address
}

// addVeth creates the pair in one request, the container end directly in the
// container's namespace (so its name cannot clash with a host device), the
// host end up and attached to the bridge. A leftover host end of the same
// attachment (a retried ADD) is replaced.
func addVeth(h *netlink.Handle, s vethSpec) (netlink.Link, error) {
	la := netlink.NewLinkAttrs()
	la.Name = s.hostName
	la.MTU = s.mtu
	la.Flags = net.FlagUp
	la.MasterIndex = s.bridge.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: la, PeerName: s.ifName, PeerMTU: uint32(s.mtu), PeerHardwareAddr: s.mac, PeerNamespace: netlink.NsFd(s.container)}
	err := h.LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) {
		old, lerr := h.LinkByName(s.hostName)
		if lerr != nil {
			return nil, fmt.Errorf("an interface named %s already exists in the container's namespace", s.ifName)
		}
		if derr := h.LinkDel(old); derr != nil {
			return nil, fmt.Errorf("remove leftover host interface %s: %w", s.hostName, derr)
		}
		err = h.LinkAdd(veth)
	}
	if err != nil {
		// The pair may exist with the master not set: remove what we made.
		if l, lerr := h.LinkByName(s.hostName); lerr == nil {
			_ = h.LinkDel(l)
		}
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("an interface named %s already exists in the container's namespace", s.ifName)
		}
		return nil, fmt.Errorf("create veth %s/%s: %w", s.hostName, s.ifName, err)
	}
	host, err := h.LinkByName(s.hostName)
	if err != nil {
		return nil, fmt.Errorf("veth %s: %w", s.hostName, err)
	}
	if s.hairpin {
		if err := h.LinkSetHairpin(host, true); err != nil {
			return host, fmt.Errorf("veth %s: hairpin mode: %w", s.hostName, err)
		}
	}
	return host, nil
}

// configureContainer gives the container's interface its address and routes
// and brings it up. It runs with a netlink handle bound to the container's
// namespace, so no thread has to switch namespaces.
func configureContainer(h *netlink.Handle, ifName string, addr netip.Prefix, gw netip.Addr, routes []netip.Prefix) (netlink.Link, error) {
	link, err := h.LinkByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("container interface %s: %w", ifName, err)
	}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("container interface %s: add address %s: %w", ifName, addr, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("container interface %s: bring up: %w", ifName, err)
	}
	gwIP := net.IP(gw.AsSlice())
	for _, dst := range routes {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(dst), Gw: gwIP}
		if err := h.RouteReplace(r); err != nil {
			return nil, fmt.Errorf("container interface %s: route %s via %s: %w", ifName, dst, gw, err)
		}
	}
	return link, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
