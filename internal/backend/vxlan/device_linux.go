package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// bigTCPLimit is the largest GSO packet allowed on the VXLAN device.
const bigTCPLimit = 65536

// deviceSpec is what the VXLAN device must look like.
type deviceSpec struct {
	name     string
	vni      int
	port     int
	gbp      bool
	learning bool
	reactive bool // proxy ARP, L2 and L3 miss notifications
	mtu      int
	mac      hwAddr
	underlay int        // underlay interface index (0: none)
	local    netip.Addr // source address of encapsulated packets (invalid: any)
}

func (s deviceSpec) link() *netlink.Vxlan {
	v := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: s.name, MTU: s.mtu, HardwareAddr: s.mac.slice()},
		VxlanId:      s.vni,
		VtepDevIndex: s.underlay,
		Port:         s.port,
		Learning:     s.learning,
		GBP:          s.gbp,
		Proxy:        s.reactive,
		L2miss:       s.reactive,
		L3miss:       s.reactive,
	}
	if s.reactive {
		v.Age = reactiveFDBAge
	}
	if s.local.IsValid() {
		v.SrcAddr = s.local.AsSlice()
	}
	return v
}

// mismatch lists the parameters of an existing link that differ from the
// spec and need the device to be recreated (MTU and MAC can be changed in
// place and are not listed).
func (s deviceSpec) mismatch(l netlink.Link) []string {
	v, ok := l.(*netlink.Vxlan)
	if !ok {
		return []string{fmt.Sprintf("it is a %s device, not vxlan", l.Type())}
	}
	var why []string
	diff := func(what string, have, want any) {
		if have != want {
			why = append(why, fmt.Sprintf("%s is %v, want %v", what, have, want))
		}
	}
	diff("VNI", v.VxlanId, s.vni)
	diff("port", v.Port, s.port)
	diff("GBP", v.GBP, s.gbp)
	diff("learning", v.Learning, s.learning)
	diff("proxy ARP", v.Proxy, s.reactive)
	diff("L2 miss", v.L2miss, s.reactive)
	diff("L3 miss", v.L3miss, s.reactive)
	diff("underlay device index", v.VtepDevIndex, s.underlay)
	if s.reactive {
		diff("FDB ageing", v.Age, reactiveFDBAge)
	}
	var have netip.Addr
	if a, ok := netip.AddrFromSlice(v.SrcAddr); ok {
		have = a.Unmap()
	}
	if have.IsUnspecified() {
		have = netip.Addr{}
	}
	diff("local address", have, s.local)
	if v.FlowBased {
		why = append(why, "it is a flow-based (external) device")
	}
	return why
}

// ensureDevice makes the VXLAN device match spec and brings it up. It
// adopts a matching device, fixes MTU and MAC in place, and replaces a
// device with other parameters, logging why. created reports whether the
// device is new (so every entry has to be replayed).
func (b *Backend) ensureDevice(spec deviceSpec) (idx int, created bool, err error) {
	h := b.host.Netlink
	l, err := h.LinkByName(spec.name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		l = nil
	case err != nil:
		return 0, false, fmt.Errorf("look up device %s: %w", spec.name, err)
	}
	if l != nil {
		if why := spec.mismatch(l); len(why) > 0 {
			b.log.Warn("replacing VXLAN device with other parameters", "reason", strings.Join(why, "; "))
			if err := h.LinkDel(l); err != nil {
				return 0, false, fmt.Errorf("remove device %s (%s): %w", spec.name, strings.Join(why, "; "), err)
			}
			l = nil
		}
	}
	if l == nil {
		if err := h.LinkAdd(spec.link()); err != nil {
			return 0, false, fmt.Errorf("create VXLAN device %s: %w", spec.name, err)
		}
		created = true
		if l, err = h.LinkByName(spec.name); err != nil {
			return 0, true, fmt.Errorf("look up new device %s: %w", spec.name, err)
		}
	}
	a := l.Attrs()
	if a.MTU != spec.mtu {
		if err := h.LinkSetMTU(l, spec.mtu); err != nil {
			return a.Index, created, fmt.Errorf("set MTU %d on %s: %w", spec.mtu, spec.name, err)
		}
	}
	if m, err := toHwAddr(a.HardwareAddr); err != nil || m != spec.mac {
		if err := h.LinkSetHardwareAddr(l, spec.mac.slice()); err != nil {
			return a.Index, created, fmt.Errorf("set MAC %s on %s: %w", spec.mac, spec.name, err)
		}
	}
	// BIG TCP (GSO packets above 64 KiB) on a tunnel device cuts the
	// packets in the tunnel and throughput collapses (measured here: to
	// 1%); keep the device at the classic 64 KiB limit.
	if a.GSOMaxSize > bigTCPLimit || a.GSOIPv4MaxSize > bigTCPLimit {
		b.log.Warn("BIG TCP is on on the VXLAN device; limiting GSO to 64 KiB", "gso_max_size", a.GSOMaxSize, "gso_ipv4_max_size", a.GSOIPv4MaxSize)
		if err := h.LinkSetGSOMaxSize(l, bigTCPLimit); err != nil {
			return a.Index, created, fmt.Errorf("limit GSO size on %s: %w", spec.name, err)
		}
		if a.GSOIPv4MaxSize > bigTCPLimit {
			if err := h.LinkSetGSOIPv4MaxSize(l, bigTCPLimit); err != nil {
				return a.Index, created, fmt.Errorf("limit IPv4 GSO size on %s: %w", spec.name, err)
			}
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(l); err != nil {
			return a.Index, created, fmt.Errorf("bring up %s: %w", spec.name, err)
		}
	}
	return a.Index, created, nil
}

// ensureAddr gives the device exactly one IPv4 address, addr/32, removing
// any other IPv4 address (a previous subnet's).
func (b *Backend) ensureAddr(idx int, addr netip.Addr) error {
	h := b.host.Netlink
	l, err := h.LinkByIndex(idx)
	if err != nil {
		return fmt.Errorf("look up device #%d: %w", idx, err)
	}
	have, err := h.AddrList(l, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	want := netip.PrefixFrom(addr, 32)
	found := false
	var errs []error
	for _, a := range have {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(ip.Unmap(), ones) == want {
			found = true
			continue
		}
		if err := h.AddrDel(l, &a); err != nil {
			errs = append(errs, fmt.Errorf("remove old address %s from %s: %w", a.IPNet, l.Attrs().Name, err))
		}
	}
	if !found {
		na := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := h.AddrReplace(l, na); err != nil {
			errs = append(errs, fmt.Errorf("add address %s to %s: %w", want, l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}
