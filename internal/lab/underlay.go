package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/netnsutil"
	"golang.org/x/sys/unix"
)

// The underlay: namespace weft-<name>-ul holds bridge br0 (segment 0,
// 198.18.0.0/24, with the etcd's address 198.18.0.1) and, when a host sits
// on segment 1, bridge br1 (198.18.1.0/24) and a router namespace
// weft-<name>-rt joining the two (198.18.0.254 and 198.18.1.254). Each host
// namespace gets eth0, a veth whose other end (h<i>) is a port of its
// segment's bridge. Nothing is created in the root namespace.

var (
	etcdAddr   = netip.MustParsePrefix("198.18.0.1/24")
	routerAddr = [2]netip.Prefix{netip.MustParsePrefix("198.18.0.254/24"), netip.MustParsePrefix("198.18.1.254/24")}
	segNet     = [2]netip.Prefix{netip.MustParsePrefix("198.18.0.0/24"), netip.MustParsePrefix("198.18.1.0/24")}
)

// handleIn returns a netlink handle bound to ns.
func handleIn(ns netns.NsHandle) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("lab: netlink handle: %w", err)
	}
	return h, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// ensureBridge creates (or adopts) a bridge and brings it up.
func ensureBridge(h *netlink.Handle, name string, mtu int) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("lab: bridge %s: %w", name, err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}}
		if err := h.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("lab: add bridge %s: %w", name, err)
		}
		if l, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("lab: bridge %s: %w", name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("lab: bridge %s up: %w", name, err)
	}
	return l, nil
}

// ensureAddr adds addr to link unless it is there already.
func ensureAddr(h *netlink.Handle, l netlink.Link, addr netip.Prefix) error {
	err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(addr)})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("lab: address %s on %s: %w", addr, l.Attrs().Name, err)
	}
	return nil
}

// setUp brings the named link up.
func setUp(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("lab: link %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("lab: link %s up: %w", name, err)
	}
	return l, nil
}

// addVeth creates a veth pair: outer in h's namespace (enslaved to master
// when master is not nil) and inner in namespace peer; both come up with
// mtu. It returns the inner link.
func addVeth(h *netlink.Handle, outer string, master netlink.Link, peer netns.NsHandle, ph *netlink.Handle, inner string, mtu int) (netlink.Link, error) {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: outer, MTU: mtu},
		PeerName:      inner,
		PeerNamespace: netlink.NsFd(peer),
	}
	if err := h.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("lab: add veth %s/%s: %w", outer, inner, err)
	}
	o, err := h.LinkByName(outer)
	if err != nil {
		return nil, fmt.Errorf("lab: veth %s: %w", outer, err)
	}
	if master != nil {
		if err := h.LinkSetMaster(o, master); err != nil {
			return nil, fmt.Errorf("lab: veth %s master %s: %w", outer, master.Attrs().Name, err)
		}
	}
	if err := h.LinkSetUp(o); err != nil {
		return nil, fmt.Errorf("lab: veth %s up: %w", outer, err)
	}
	in, err := ph.LinkByName(inner)
	if err != nil {
		return nil, fmt.Errorf("lab: veth %s: %w", inner, err)
	}
	if in.Attrs().MTU != mtu {
		if err := ph.LinkSetMTU(in, mtu); err != nil {
			return nil, fmt.Errorf("lab: veth %s mtu %d: %w", inner, mtu, err)
		}
	}
	if err := ph.LinkSetUp(in); err != nil {
		return nil, fmt.Errorf("lab: veth %s up: %w", inner, err)
	}
	return in, nil
}

// addRoute adds dst via gw in h's namespace.
func addRoute(h *netlink.Handle, dst netip.Prefix, gw netip.Addr) error {
	r := &netlink.Route{Dst: ipNet(dst), Gw: gw.AsSlice()}
	if err := h.RouteAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("lab: route %s via %s: %w", dst, gw, err)
	}
	return nil
}

// nsSet holds the open handles of a lab's namespaces while it is built.
type nsSet struct {
	ns map[string]netns.NsHandle
	nl map[string]*netlink.Handle
}

func newNSSet() *nsSet {
	return &nsSet{ns: map[string]netns.NsHandle{}, nl: map[string]*netlink.Handle{}}
}

// create makes a named namespace, brings its lo up and keeps handles.
func (s *nsSet) create(name string) (netns.NsHandle, *netlink.Handle, error) {
	ns, err := netnsutil.Create(name)
	if err != nil {
		return -1, nil, err
	}
	s.ns[name] = ns
	h, err := handleIn(ns)
	if err != nil {
		return -1, nil, err
	}
	s.nl[name] = h
	if _, err := setUp(h, "lo"); err != nil {
		return -1, nil, err
	}
	return ns, h, nil
}

// open returns handles for an existing named namespace.
func (s *nsSet) open(name string) (netns.NsHandle, *netlink.Handle, error) {
	if ns, ok := s.ns[name]; ok {
		return ns, s.nl[name], nil
	}
	ns, err := netns.GetFromName(name)
	if err != nil {
		return -1, nil, fmt.Errorf("lab: namespace %s: %w", name, err)
	}
	s.ns[name] = ns
	h, err := handleIn(ns)
	if err != nil {
		return -1, nil, err
	}
	s.nl[name] = h
	return ns, h, nil
}

func (s *nsSet) close() {
	for _, h := range s.nl {
		h.Close()
	}
	for _, ns := range s.ns {
		ns.Close()
	}
}

// buildUnderlay creates the underlay namespace, the router when segment 1
// is used, and every host namespace with its eth0.
func buildUnderlay(spec *Spec, set *nsSet) error {
	_, ul, err := set.create(ulNS(spec.Name))
	if err != nil {
		return err
	}
	br0, err := ensureBridge(ul, "br0", spec.UnderlayMTU)
	if err != nil {
		return err
	}
	if err := ensureAddr(ul, br0, etcdAddr); err != nil {
		return err
	}
	bridges := []netlink.Link{br0}
	twoSegments := false
	for _, seg := range spec.Segments {
		twoSegments = twoSegments || seg == 1
	}
	if twoSegments {
		br1, err := ensureBridge(ul, "br1", spec.UnderlayMTU)
		if err != nil {
			return err
		}
		bridges = append(bridges, br1)
		rtNs, rt, err := set.create(rtNS(spec.Name))
		if err != nil {
			return err
		}
		for seg := range 2 {
			in, err := addVeth(ul, fmt.Sprintf("rt%d", seg), bridges[seg], rtNs, rt, fmt.Sprintf("eth%d", seg), spec.UnderlayMTU)
			if err != nil {
				return err
			}
			if err := ensureAddr(rt, in, routerAddr[seg]); err != nil {
				return err
			}
		}
		if err := writeSysctl(rtNs, "net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
		if err := addRoute(ul, segNet[1], routerAddr[0].Addr()); err != nil {
			return err
		}
	}
	for i := 1; i <= spec.Hosts; i++ {
		hns, hh, err := set.create(hostNS(spec.Name, i))
		if err != nil {
			return err
		}
		seg := spec.segment(i)
		eth0, err := addVeth(ul, hostName(i), bridges[seg], hns, hh, "eth0", spec.UnderlayMTU)
		if err != nil {
			return err
		}
		if err := ensureAddr(hh, eth0, netip.PrefixFrom(spec.underlayIP(i), 24)); err != nil {
			return err
		}
		if twoSegments {
			other := 1 - seg
			if err := addRoute(hh, segNet[other], routerAddr[seg].Addr()); err != nil {
				return err
			}
		}
		if err := writeSysctl(hns, "net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
	}
	if spec.UnderlayNeighbours == "static" {
		return staticNeighbours(spec, set)
	}
	return nil
}

// station is an address on an underlay segment and the link that owns it.
type station struct {
	ns   string // namespace
	dev  string // device in ns
	addr netip.Addr
	mac  net.HardwareAddr
}

// staticNeighbours writes permanent neighbour entries so that nothing on
// the underlay needs ARP: every station learns every other station of its
// segment. Permanent entries do not count against the kernel's shared
// neighbour table limits, which a big lab would otherwise exhaust.
func staticNeighbours(spec *Spec, set *nsSet) error {
	segs := [2][]station{
		{{ns: ulNS(spec.Name), dev: "br0", addr: etcdAddr.Addr()}},
	}
	if _, ok := set.nl[rtNS(spec.Name)]; ok {
		segs[0] = append(segs[0], station{ns: rtNS(spec.Name), dev: "eth0", addr: routerAddr[0].Addr()})
		segs[1] = append(segs[1], station{ns: rtNS(spec.Name), dev: "eth1", addr: routerAddr[1].Addr()})
	}
	for i := 1; i <= spec.Hosts; i++ {
		seg := spec.segment(i)
		segs[seg] = append(segs[seg], station{ns: hostNS(spec.Name, i), dev: "eth0", addr: spec.underlayIP(i)})
	}
	for _, stations := range segs {
		idx := make([]int, len(stations))
		for k := range stations {
			l, err := set.nl[stations[k].ns].LinkByName(stations[k].dev)
			if err != nil {
				return fmt.Errorf("lab: %s in %s: %w", stations[k].dev, stations[k].ns, err)
			}
			stations[k].mac, idx[k] = l.Attrs().HardwareAddr, l.Attrs().Index
		}
		for k, st := range stations {
			h := set.nl[st.ns]
			for m, peer := range stations {
				if m == k {
					continue
				}
				n := &netlink.Neigh{LinkIndex: idx[k], Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: peer.addr.AsSlice(), HardwareAddr: peer.mac}
				if err := h.NeighSet(n); err != nil {
					return fmt.Errorf("lab: neighbour %s on %s in %s: %w", peer.addr, st.dev, st.ns, err)
				}
			}
		}
	}
	return nil
}
