package vxlan

import (
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
		*f = fastPath{loaded: true, fd: fd, id: id, tunnel: tunnel, own: b.own, warned: f.warned}
		b.log.Info("loaded fast path program", "prog_id", id, "overlay", b.host.Network.Network, "own_subnet", b.own)
	}
	ports, err := b.bridgePorts()
	if err != nil {
		b.warnOnce("list", "fast path: cannot list links", err)
		return
	}
	for _, l := range ports {
		if err := b.ensureFastPath(l); err != nil {
			b.warnOnce(l.Attrs().Name, "fast path not attached; this pod uses the normal path", err)
		}
	}
}

func (b *Backend) warnOnce(key, msg string, err error) {
	k := key + "\x00" + err.Error()
	if !b.fast.warned[k] {
		b.fast.warned[k] = true
		b.log.Warn(msg, "link", key, "error", err)
	}
}

// bridgePorts returns the veths enslaved to the pod bridge (one link dump;
// none when the bridge does not exist yet).
func (b *Backend) bridgePorts() ([]netlink.Link, error) {
	links, err := b.host.Netlink.LinkList()
	if err != nil {
		return nil, err
	}
	br := 0
	for _, l := range links {
		if l.Attrs().Name == b.s.bridge && l.Type() == "bridge" {
			br = l.Attrs().Index
		}
	}
	if br == 0 {
		return nil, nil
	}
	var ports []netlink.Link
	for _, l := range links {
		if l.Attrs().MasterIndex == br && l.Type() == "veth" {
			ports = append(ports, l)
		}
	}
	return ports, nil
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

// ensureFastPath attaches the loaded program to l's ingress unless it is
// there already.
func (b *Backend) ensureFastPath(l netlink.Link) error {
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
		if ours.Id == b.fast.id {
			return nil
		}
		replace = true // an earlier program (weftd restarted, device recreated)
	}
	nf := &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Handle: fastPathHandle, Protocol: unix.ETH_P_ALL, Priority: fastPathPrio},
		Fd:           b.fast.fd,
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
	b.log.Info("fast path attached", "link", l.Attrs().Name, "prog_id", b.fast.id)
	return nil
}

// sweepFastPath removes Weft's fast path filters from the bridge's veths
// (left by a run with FastPath on). Qdiscs stay.
func (b *Backend) sweepFastPath() {
	ports, err := b.bridgePorts()
	if err != nil {
		b.log.Debug("fast path sweep: cannot list links", "error", err)
		return
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
