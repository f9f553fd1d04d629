package vxlan

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/routes"
)

// reactiveIdle is how long reactive entries for a peer stay after the last
// frame sent to it. The device's own FDB ageing is off in reactive mode (it
// counts from the last update, not the last use, and would cut active
// flows); Weft expires entries itself on Reconcile.
const reactiveIdle = 5 * time.Minute

// reactiveFDBAge is the device's FDB ageing in reactive mode, in seconds: a
// year, in effect off (the kernel reads 0 as its default of 300 s).
const reactiveFDBAge = 365 * 24 * 3600

// userHZ is the unit of the kernel's neighbour cache timestamps.
const userHZ = 100

// syncStats counts what one sync changed.
type syncStats struct {
	fdbAdded, neighAdded, neighRemoved, fdbRemoved int
	routes                                         routes.Result
}

func (s syncStats) changed() bool {
	return s.fdbAdded+s.neighAdded+s.neighRemoved+s.fdbRemoved+s.routes.Added+s.routes.Replaced+s.routes.Removed > 0
}

func ipOf(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}

func fdbEntry(idx int, mac hwAddr, dst netip.Addr, state int) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    idx,
		Family:       unix.AF_BRIDGE,
		State:        state,
		Flags:        netlink.NTF_SELF,
		HardwareAddr: mac.slice(),
		IP:           dst.AsSlice(),
	}
}

func neighEntry(idx int, ip netip.Addr, mac hwAddr, state int) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    idx,
		Family:       unix.AF_INET,
		State:        state,
		Type:         unix.RTN_UNICAST,
		IP:           ip.AsSlice(),
		HardwareAddr: mac.slice(),
	}
}

// syncEntries makes the FDB, neighbour table and routes of the device idx
// serve exactly the peers in t. One dump per table; writes only for
// differences; adds FDB → neighbour → route and removes route → neighbour →
// FDB, so the kernel never has to ARP across the tunnel. It keeps going
// after a failure and returns the failures joined.
func (b *Backend) syncEntries(idx int, t *peerTable, own netip.Prefix) (syncStats, error) {
	var st syncStats
	h := b.host.Netlink
	static := b.s.mode == ModeStatic
	fdbs, err := h.NeighList(idx, unix.AF_BRIDGE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return st, fmt.Errorf("list FDB of %s: %w", b.s.device, err)
	}
	neighs, err := h.NeighList(idx, unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return st, fmt.Errorf("list neighbours of %s: %w", b.s.device, err)
	}
	var errs []error

	// Adds: FDB first, then neighbours.
	if static {
		haveFDB := make(map[hwAddr]netip.Addr, len(fdbs))
		for _, f := range fdbs {
			if f.LinkIndex != idx || f.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			if m, err := toHwAddr(f.HardwareAddr); err == nil {
				if p := t.byMAC[m]; p != nil && ipOf(f.IP) == p.public {
					haveFDB[m] = p.public
				}
			}
		}
		for _, p := range t.peers {
			if p.direct {
				continue
			}
			if _, ok := haveFDB[p.mac]; ok {
				continue
			}
			if err := h.NeighSet(fdbEntry(idx, p.mac, p.public, netlink.NUD_PERMANENT)); err != nil {
				errs = append(errs, fmt.Errorf("FDB entry %s → %s for %s: %w", p.mac, p.public, p.subnet, err))
				continue
			}
			st.fdbAdded++
		}
		haveNeigh := make(map[netip.Addr]hwAddr, len(neighs))
		for _, n := range neighs {
			if n.LinkIndex != idx || n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			if m, err := toHwAddr(n.HardwareAddr); err == nil {
				haveNeigh[ipOf(n.IP)] = m
			}
		}
		for _, p := range t.peers {
			if p.direct {
				continue
			}
			if m, ok := haveNeigh[p.subnet.Addr()]; ok && m == p.mac {
				continue
			}
			if err := h.NeighSet(neighEntry(idx, p.subnet.Addr(), p.mac, netlink.NUD_PERMANENT)); err != nil {
				errs = append(errs, fmt.Errorf("neighbour %s → %s for %s: %w", p.subnet.Addr(), p.mac, p.subnet, err))
				continue
			}
			st.neighAdded++
		}
	}

	// Routes: adds and removals (package routes adds before it removes).
	underlay := b.host.Iface.Index
	network := b.host.Network.Network
	var want []routes.Route
	if !static {
		want = append(want, routes.Route{Dst: network, LinkIndex: idx})
	}
	for _, p := range t.peers {
		switch {
		case p.direct:
			want = append(want, routes.Route{Dst: p.subnet, Gw: p.public, LinkIndex: underlay})
		case static:
			want = append(want, routes.Route{Dst: p.subnet, Gw: p.subnet.Addr(), LinkIndex: idx, OnLink: true})
		}
	}
	owned := func(r routes.Route) bool {
		if r.Dst == own || !network.Overlaps(r.Dst) {
			return false
		}
		return r.LinkIndex == idx || (underlay != 0 && r.LinkIndex == underlay)
	}
	res, err := routes.Sync(h, unix.AF_INET, want, owned)
	st.routes = res
	if err != nil {
		errs = append(errs, err)
	}

	// Reactive entries expire when their peer has not been sent anything
	// for b.idle: the FDB entry's "used" time is refreshed by every
	// transmitted frame (the neighbour's is not a usable signal: answering
	// the kernel's probes refreshes it).
	idle := map[hwAddr]bool{}
	if !static {
		for _, f := range fdbs {
			if f.LinkIndex != idx || f.State&netlink.NUD_PERMANENT != 0 {
				continue
			}
			if m, err := toHwAddr(f.HardwareAddr); err == nil && time.Duration(f.Used)*time.Second/userHZ > b.idle {
				idle[m] = true
			}
		}
	}

	// Removals: neighbours, then FDB.
	for _, n := range neighs {
		if n.LinkIndex != idx {
			continue
		}
		m, err := toHwAddr(n.HardwareAddr)
		if err != nil {
			continue // no link-layer address: the kernel is resolving it
		}
		ip := ipOf(n.IP)
		p := t.lookupIP(ip)
		var keep bool
		switch {
		case n.State&netlink.NUD_PERMANENT != 0:
			keep = static && p != nil && !p.direct && ip == p.subnet.Addr() && p.mac == m
		case n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0:
			keep = p != nil && !p.direct && p.mac == m && !idle[m]
		default:
			continue
		}
		if keep {
			continue
		}
		if err := h.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, IP: n.IP}); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove neighbour %s: %w", ip, err))
			continue
		}
		st.neighRemoved++
	}
	for _, f := range fdbs {
		if f.LinkIndex != idx {
			continue
		}
		m, err := toHwAddr(f.HardwareAddr)
		if err != nil {
			continue // zero (default destination) or multicast: not Weft's
		}
		var keep bool
		p := t.byMAC[m]
		dst := ipOf(f.IP)
		switch {
		case f.State&netlink.NUD_PERMANENT != 0:
			keep = static && p != nil && dst == p.public
		case f.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0:
			keep = p != nil && dst == p.public && !idle[m]
		default:
			continue
		}
		if keep {
			continue
		}
		if err := h.NeighDel(fdbEntry(idx, m, dst, 0)); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove FDB entry %s → %s: %w", m, dst, err))
			continue
		}
		st.fdbRemoved++
	}
	return st, errors.Join(errs...)
}
