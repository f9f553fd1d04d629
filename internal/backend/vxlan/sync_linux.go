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
	routesAdded                                    int
	routes                                         routes.Result
}

func (s syncStats) changed() bool {
	return s.fdbAdded+s.neighAdded+s.neighRemoved+s.fdbRemoved+s.routesAdded+s.routes.Added+s.routes.Replaced+s.routes.Removed > 0
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
	bt, err := newBatcher(b.host.NetNS)
	if err != nil {
		return st, err
	}
	defer bt.close()

	// Adds: FDB first, then neighbours.
	if static {
		haveFDB := make(map[hwAddr]bool, len(fdbs))
		for _, f := range fdbs {
			if f.LinkIndex != idx || f.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			if m, err := toHwAddr(f.HardwareAddr); err == nil {
				if p := t.byMAC[m]; p != nil && ipOf(f.IP) == p.public {
					haveFDB[m] = true
				}
			}
		}
		for _, p := range t.peers {
			if !p.direct && !haveFDB[p.mac] {
				bt.setFDB(idx, p.mac, p.public, netlink.NUD_PERMANENT)
				st.fdbAdded++
			}
		}
		if err := bt.done(); err != nil {
			errs = append(errs, err)
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
			bt.setNeigh(idx, p.subnet.Addr(), p.mac, netlink.NUD_PERMANENT)
			st.neighAdded++
		}
		if err := bt.done(); err != nil {
			errs = append(errs, err)
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
	// New gateway routes go in first, batched and with a spread metric (see
	// routeMetric); package routes then finds them in place and does the
	// rest: changes, removals, routes Weft did not make.
	added, err := b.addNewRoutes(bt, want)
	st.routesAdded = added
	if err != nil {
		errs = append(errs, err)
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
		bt.delNeigh(idx, ip)
		st.neighRemoved++
	}
	if err := bt.done(); err != nil {
		errs = append(errs, ignoreMissing(err))
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
		bt.delFDB(idx, m, dst)
		st.fdbRemoved++
	}
	if err := bt.done(); err != nil {
		errs = append(errs, ignoreMissing(err))
	}
	return st, errors.Join(errs...)
}

// ignoreMissing drops "no such entry" failures from a joined error: the
// entry is gone, which is what a removal wanted.
func ignoreMissing(err error) error {
	var keep []error
	for _, e := range unwrapJoined(err) {
		if !errors.Is(e, unix.ENOENT) && !errors.Is(e, unix.ESRCH) {
			keep = append(keep, e)
		}
	}
	return errors.Join(keep...)
}

func unwrapJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

// addNewRoutes adds, in one batch, the desired gateway routes whose
// destination has no route in the main table yet.
func (b *Backend) addNewRoutes(bt *batcher, want []routes.Route) (int, error) {
	cur, err := b.host.Netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	taken := make(map[netip.Prefix]bool, len(cur))
	for _, r := range cur {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		taken[netip.PrefixFrom(ipOf(r.Dst.IP), ones)] = true
	}
	n := 0
	for _, r := range want {
		if r.Gw.IsValid() && !taken[r.Dst] {
			bt.addRoute(r, routeMetric(r.Dst))
			n++
		}
	}
	return n, bt.done()
}
