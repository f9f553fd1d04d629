package vxlan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The fast path (option FastPath): a tc program on the ingress of every pod
// veth on the pod bridge sends IPv4 packets for other hosts' pods straight
// to the VXLAN device with bpf_redirect_neigh, which looks up the route and
// the (permanent) neighbour the static mode already wrote. The packet skips
// the bridge, IP forwarding and netfilter on its way out of the host.
//
// What Weft owns: on each pod veth, the tc filter at parent ingress
// (ffff:fff2) with priority fastPathPrio, handle fastPathHandle and name
// fastPathName. Weft adds a clsact qdisc where the veth has no ingress-side
// qdisc, and leaves it in place (it may carry others' filters); it never
// changes or removes a qdisc or any other filter.
const (
	fastPathName   = "weft_fastpath"
	fastPathPrio   = 0x5746 // "WF"
	fastPathHandle = 0x5746
)

// fastPath is the fast path's state, used from Reconcile's goroutine only.
type fastPath struct {
	loaded bool
	fd, id int
	// tunnel and own are what the loaded program was built for.
	tunnel int
	own    netip.Prefix
	// off is set when the kernel refused the program: the normal path is
	// used and nothing is retried until weftd restarts.
	off bool
	// swept is set once, with FastPath off, Weft's filters of an earlier
	// run have been removed.
	swept bool
	// warned holds the per-veth problems already logged.
	warned map[string]bool

	// The ingress half: a program on the VXLAN device delivering to local
	// pods, and the map of pod addresses it reads (see podValue).
	inLoaded, inOff bool
	inFd, inID      int
	mapFd           int
	// pods mirrors the map's contents.
	pods map[[4]byte][podValueLen]byte
}

// podValueLen is the size of a pod map value: the host-side veth's ifindex
// (u32, host order), the pod's MAC, the bridge's MAC.
const podValueLen = 16

// progToPods builds the ingress half: an IPv4 packet whose destination is
// in the pod map gets the pod's MAC as destination and the bridge's as
// source and is handed to the pod's namespace with bpf_redirect_peer
// through the host-side veth; everything else goes on as usual.
func progToPods(mapFd int) []bpfInsn {
	p := []bpfInsn{
		insn(opMovX, 6, 1, 0, 0),
		insn(opLdxW, 7, 6, skbData, 0),
		insn(opLdxW, 8, 6, skbDataEnd, 0),
		insn(opMovX, 4, 7, 0, 0),
		insn(opAddK, 4, 0, 0, 34),
		insn(opJgtX, 4, 8, 22, 0), // short packet → pass
		insn(opLdxH, 5, 7, 12, 0),
		insn(opJneK, 5, 0, 20, 0x0008), // not IPv4 → pass
		insn(opLdxW, 5, 7, 30, 0),      // destination address
		insn(opStxW, 10, 5, -4, 0),     // key on the stack
	}
	p = append(p, ldMapFD(1, mapFd)...)
	return append(p,
		insn(opMovX, 2, 10, 0, 0),
		insn(opAddK, 2, 0, 0, -4),
		insn(opCall, 0, 0, 0, fnMapLookupElem),
		insn(opJeqK, 0, 0, 12, 0), // not a local pod → pass
		insn(opLdxW, 1, 0, 4, 0),  // pod MAC → Ethernet destination
		insn(opStxW, 7, 1, 0, 0),
		insn(opLdxH, 1, 0, 8, 0),
		insn(opStxH, 7, 1, 4, 0),
		insn(opLdxH, 1, 0, 10, 0), // bridge MAC → Ethernet source
		insn(opStxH, 7, 1, 6, 0),
		insn(opLdxW, 1, 0, 12, 0),
		insn(opStxW, 7, 1, 8, 0),
		insn(opLdxW, 1, 0, 0, 0), // host-side veth
		insn(opMovK, 2, 0, 0, 0),
		insn(opCall, 0, 0, 0, fnRedirectPeer),
		insn(opExit, 0, 0, 0, 0),
		insn(opMovK, 0, 0, 0, 0), // pass: TC_ACT_OK
		insn(opExit, 0, 0, 0, 0),
	)
}

// progToTunnel builds the fast path's program: IPv4 packets whose
// destination lies in overlay but outside own are redirected to the
// device tunnel (bpf_redirect_neigh: FIB and neighbour lookup on it);
// everything else goes on as usual (TC_ACT_OK).
func progToTunnel(overlay, own netip.Prefix, tunnel int) []bpfInsn {
	mask := func(p netip.Prefix) int32 { return le(net.CIDRMask(p.Bits(), 32)) }
	addr := func(p netip.Prefix) int32 { a := p.Masked().Addr().As4(); return le(a[:]) }
	return []bpfInsn{
		insn(opMovX, 6, 1, 0, 0),
		insn(opLdxW, 2, 6, skbData, 0),
		insn(opLdxW, 3, 6, skbDataEnd, 0),
		insn(opMovX, 4, 2, 0, 0),
		insn(opAddK, 4, 0, 0, 34),      // Ethernet + IPv4 header
		insn(opJgtX, 4, 3, 15, 0),      // short packet → pass
		insn(opLdxH, 5, 2, 12, 0),      // EtherType
		insn(opJneK, 5, 0, 13, 0x0008), // not IPv4 → pass
		insn(opLdxW, 5, 2, 30, 0),      // destination address
		insn(opMovX, 7, 5, 0, 0),
		insn(opAndK, 7, 0, 0, mask(overlay)),
		insn(opJne32K, 7, 0, 9, addr(overlay)), // not in the overlay → pass
		insn(opMovX, 7, 5, 0, 0),
		insn(opAndK, 7, 0, 0, mask(own)),
		insn(opJeq32K, 7, 0, 6, addr(own)), // this host's subnet → pass
		insn(opMovK, 1, 0, 0, int32(tunnel)),
		insn(opMovK, 2, 0, 0, 0),
		insn(opMovK, 3, 0, 0, 0),
		insn(opMovK, 4, 0, 0, 0),
		insn(opCall, 0, 0, 0, fnRedirectNeigh),
		insn(opExit, 0, 0, 0, 0),
		insn(opMovK, 0, 0, 0, 0), // pass: TC_ACT_OK
		insn(opExit, 0, 0, 0, 0),
	}
}

// reconcileFastPath attaches the fast path to the bridge's veths where it
// is missing (FastPath on) or removes Weft's filters once (FastPath off).
// Problems are logged, never returned: the normal path always works.
func (b *Backend) reconcileFastPath(tunnel int) {
	f := &b.fast
	if f.warned == nil {
		f.warned = map[string]bool{}
	}
	if !b.s.fastPath {
		if !f.swept {
			f.swept = true
			b.sweepFastPath()
		}
		return
	}
	if f.off || !b.own.IsValid() || b.host.Network == nil {
		return
	}
	if !f.loaded || f.tunnel != tunnel || f.own != b.own {
		fd, err := loadProg(fastPathName, progToTunnel(b.host.Network.Network, b.own, tunnel))
		var id int
		if err == nil {
			if id, err = progID(fd); err != nil {
				_ = unix.Close(fd)
			}
		}
		if err != nil {
			f.off = true
			b.log.Warn("fast path unavailable, pods use the normal path (bridge and IP forwarding)", "error", err)
			return
		}
		if f.loaded {
			_ = unix.Close(f.fd)
		}
		f.loaded, f.fd, f.id, f.tunnel, f.own = true, fd, id, tunnel, b.own
		b.log.Info("loaded fast path program", "prog_id", id, "overlay", b.host.Network.Network, "own_subnet", b.own)
	}
	br, ports, tun, err := b.bridgePorts(tunnel)
	if err != nil {
		b.warnOnce("list", "fast path: cannot list links", err)
		return
	}
	for _, l := range ports {
		if err := b.ensureFilter(l, f.fd, f.id); err != nil {
			b.warnOnce(l.Attrs().Name, "fast path not attached; this pod uses the normal path", err)
		}
	}
	if br == nil || tun == nil || f.inOff {
		return
	}
	if !f.inLoaded {
		if err := b.loadIngress(); err != nil {
			f.inOff = true
			b.log.Warn("fast path: the ingress half is unavailable, packets to local pods use the normal path", "error", err)
			return
		}
	}
	if err := b.syncPods(br, ports); err != nil {
		b.warnOnce("pods", "fast path: cannot update the pod map", err)
	}
	if err := b.ensureFilter(tun, f.inFd, f.inID); err != nil {
		b.warnOnce(tun.Attrs().Name, "fast path: ingress half not attached", err)
	}
}

// loadIngress creates the pod map and loads the ingress program.
func (b *Backend) loadIngress() error {
	f := &b.fast
	max := 1 << min(32-b.own.Bits(), 16)
	m, err := createHashMap("weft_pods", 4, podValueLen, max)
	if err != nil {
		return err
	}
	fd, err := loadProg("weft_topod", progToPods(m))
	var id int
	if err == nil {
		if id, err = progID(fd); err != nil {
			_ = unix.Close(fd)
		}
	}
	if err != nil {
		_ = unix.Close(m)
		return err
	}
	f.inLoaded, f.inFd, f.inID, f.mapFd, f.pods = true, fd, id, m, map[[4]byte][podValueLen]byte{}
	b.log.Info("loaded fast path ingress program", "prog_id", id)
	return nil
}

// syncPods makes the pod map hold every local pod the bridge knows: its
// address and MAC from the bridge's neighbour table, its veth from the
// bridge's FDB (the port the MAC was learned on).
func (b *Backend) syncPods(br netlink.Link, ports []netlink.Link) error {
	f := &b.fast
	h := b.host.Netlink
	isPort := make(map[int]bool, len(ports))
	for _, p := range ports {
		isPort[p.Attrs().Index] = true
	}
	fdb, err := h.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("list FDB: %w", err)
	}
	portOf := map[[6]byte]int{}
	for _, e := range fdb {
		if isPort[e.LinkIndex] && e.MasterIndex == br.Attrs().Index && len(e.HardwareAddr) == 6 && e.Flags&netlink.NTF_SELF == 0 {
			portOf[[6]byte(e.HardwareAddr)] = e.LinkIndex
		}
	}
	neighs, err := h.NeighList(br.Attrs().Index, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", br.Attrs().Name, err)
	}
	brMAC := br.Attrs().HardwareAddr
	want := map[[4]byte][podValueLen]byte{}
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP.To4())
		if !ok || !b.own.Contains(ip) || len(n.HardwareAddr) != 6 || len(brMAC) != 6 ||
			n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) == 0 {
			continue
		}
		port, ok := portOf[[6]byte(n.HardwareAddr)]
		if !ok {
			continue
		}
		var v [podValueLen]byte
		binary.NativeEndian.PutUint32(v[0:], uint32(port))
		copy(v[4:], n.HardwareAddr)
		copy(v[10:], brMAC)
		want[ip.As4()] = v
	}
	var errs []error
	changed := 0
	defer func() {
		if changed > 0 {
			b.log.Info("fast path pod map updated", "pods", len(f.pods), "changed", changed)
		}
	}()
	for k, v := range want {
		if old, ok := f.pods[k]; ok && old == v {
			continue
		}
		if err := mapUpdate(f.mapFd, k[:], v[:]); err != nil {
			errs = append(errs, err)
			continue
		}
		f.pods[k] = v
		changed++
	}
	for k := range f.pods {
		if _, ok := want[k]; !ok {
			if err := mapDelete(f.mapFd, k[:]); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(f.pods, k)
			changed++
		}
	}
	return errors.Join(errs...)
}

func (b *Backend) warnOnce(key, msg string, err error) {
	k := key + "\x00" + err.Error()
	if !b.fast.warned[k] {
		b.fast.warned[k] = true
		b.log.Warn(msg, "link", key, "error", err)
	}
}

// bridgePorts returns, from one link dump, the pod bridge (nil when it
// does not exist yet), the veths enslaved to it, and the link with index
// tunnel (nil if absent).
func (b *Backend) bridgePorts(tunnel int) (br netlink.Link, ports []netlink.Link, tun netlink.Link, err error) {
	links, err := b.host.Netlink.LinkList()
	if err != nil {
		return nil, nil, nil, err
	}
	for _, l := range links {
		if l.Attrs().Name == b.s.bridge && l.Type() == "bridge" {
			br = l
		}
		if tunnel != 0 && l.Attrs().Index == tunnel {
			tun = l
		}
	}
	if br == nil {
		return nil, nil, tun, nil
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index && l.Type() == "veth" {
			ports = append(ports, l)
		}
	}
	return br, ports, tun, nil
}

// isFastPathFilter reports whether f is at Weft's place (priority and
// handle) and whether it carries Weft's name.
func isFastPathFilter(f netlink.Filter) (atPlace bool, ours *netlink.BpfFilter) {
	a := f.Attrs()
	if a.Priority != fastPathPrio || a.Handle != fastPathHandle {
		return false, nil
	}
	if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == fastPathName {
		return true, bf
	}
	return true, nil
}

// ensureFilter attaches program fd (id) to l's ingress as Weft's filter
// unless it is there already.
func (b *Backend) ensureFilter(l netlink.Link, fd, id int) error {
	h := b.host.Netlink
	qs, err := h.QdiscList(l)
	if err != nil {
		return fmt.Errorf("list qdiscs: %w", err)
	}
	hasIngress := false
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_INGRESS {
			hasIngress = true // clsact or ingress: both take filters at ffff:fff2
		}
	}
	if !hasIngress {
		q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
		if err := h.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add clsact qdisc: %w", err)
		}
	}
	fs, err := h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return fmt.Errorf("list ingress filters: %w", err)
	}
	replace := false
	for _, f := range fs {
		atPlace, ours := isFastPathFilter(f)
		if !atPlace {
			continue
		}
		if ours == nil {
			return fmt.Errorf("priority %d handle %#x at ingress holds a filter Weft did not make; leaving it", fastPathPrio, fastPathHandle)
		}
		if ours.Id == id {
			return nil
		}
		replace = true // an earlier program (weftd restarted, device recreated)
	}
	nf := &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Handle: fastPathHandle, Protocol: unix.ETH_P_ALL, Priority: fastPathPrio},
		Fd:           fd,
		Name:         fastPathName,
		DirectAction: true,
	}
	if replace {
		err = h.FilterReplace(nf)
	} else {
		err = h.FilterAdd(nf)
	}
	if err != nil {
		return fmt.Errorf("attach program: %w", err)
	}
	b.log.Info("fast path attached", "link", l.Attrs().Name, "prog_id", id)
	return nil
}

// sweepFastPath removes Weft's fast path filters from the bridge's veths
// (left by a run with FastPath on). Qdiscs stay.
func (b *Backend) sweepFastPath() {
	_, ports, _, err := b.bridgePorts(0)
	if err != nil {
		b.log.Debug("fast path sweep: cannot list links", "error", err)
		return
	}
	if tun, err := b.host.Netlink.LinkByName(b.s.device); err == nil {
		ports = append(ports, tun)
	}
	for _, l := range ports {
		fs, err := b.host.Netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			continue // no ingress qdisc: nothing of ours
		}
		for _, f := range fs {
			if _, ours := isFastPathFilter(f); ours != nil {
				if err := b.host.Netlink.FilterDel(ours); err != nil {
					b.log.Warn("fast path sweep: cannot remove filter", "link", l.Attrs().Name, "error", err)
				} else {
					b.log.Info("removed fast path filter (FastPath is off)", "link", l.Attrs().Name)
				}
			}
		}
	}
}
