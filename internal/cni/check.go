package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/masq"
)

// Check verifies that the attachment described by prevResult is still in
// place: the allocation on disk, the bridge with its gateway address, the
// host end on the bridge, and the container's interface with its address,
// MTU and routes. Every discrepancy is reported, not just the first.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.RawPrevResult == nil {
		return fieldErr(types.ErrInvalidNetworkConfig, "prevResult", "is required for CHECK (the runtime passes the result of ADD)")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return fieldErr(types.ErrDecodingFailure, "prevResult", "%v", err)
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fieldErr(types.ErrDecodingFailure, "prevResult", "%v", err)
	}
	env, err := readEnv(conf, types.ErrTryAgainLater)
	if err != nil {
		return err
	}
	addr, ok := resultAddr(prev, args.IfName)
	if !ok {
		return fieldErr(types.ErrInvalidNetworkConfig, "prevResult", "has no address for interface %s", args.IfName)
	}
	gw := netip.PrefixFrom(env.Gateway(), env.Subnet.Bits())
	var errs []error
	if addr.Bits() != gw.Bits() || !env.HostSubnet().Contains(addr.Addr()) {
		errs = append(errs, fmt.Errorf("address %s is not in this host's subnet %s (the host's lease changed?)", addr, env.HostSubnet()))
	}
	errs = append(errs, checkAllocation(conf, args, addr.Addr()))

	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	brIndex, err := checkBridge(h, conf.Bridge, gw)
	errs = append(errs, err)
	errs = append(errs, checkHostVeth(h, hostVethName(conf.Name, args.ContainerID, args.IfName), brIndex, conf.HairpinMode))

	cns, err := ns.GetNS(args.Netns)
	if err != nil {
		errs = append(errs, fmt.Errorf("container namespace %q: %w", args.Netns, err))
	} else {
		defer cns.Close()
		errs = append(errs, checkContainer(cns, args.IfName, addr, conf.mtu(env), env.Gateway(), conf.routes(env)))
	}
	if masqOn(conf, env) {
		errs = append(errs, masq.Check(env.Network))
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "CHECK failed: "+err.Error(), "")
	}
	return nil
}

func resultAddr(r *types100.Result, ifName string) (netip.Prefix, bool) {
	for _, ip := range r.IPs {
		if ip.Interface == nil || *ip.Interface < 0 || *ip.Interface >= len(r.Interfaces) {
			continue
		}
		if r.Interfaces[*ip.Interface].Name != ifName || r.Interfaces[*ip.Interface].Sandbox == "" {
			continue
		}
		if p, ok := prefixOf(&ip.Address); ok && p.Addr().Is4() {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func checkAllocation(conf *NetConf, args *skel.CmdArgs, addr netip.Addr) error {
	store, err := OpenStore(conf.DataDir, conf.Name)
	if err != nil {
		return err
	}
	defer store.Close()
	all, err := store.List()
	if err != nil {
		return err
	}
	for _, a := range all {
		if a.Addr == addr {
			if a.ContainerID != args.ContainerID || (a.IfName != "" && a.IfName != args.IfName) {
				return fmt.Errorf("address %s is allocated to container %s interface %s, not to this one", addr, a.ContainerID, a.IfName)
			}
			return nil
		}
	}
	return fmt.Errorf("address %s is not allocated in %s", addr, store.Dir())
}

func checkBridge(h *netlink.Handle, name string, gw netip.Prefix) (int, error) {
	br, err := h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("bridge %s: %w", name, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return 0, fmt.Errorf("%s is a %s, not a bridge", name, br.Type())
	}
	var errs []error
	if br.Attrs().Flags&net.FlagUp == 0 {
		errs = append(errs, fmt.Errorf("bridge %s is down", name))
	}
	if !hasAddr(h, br, gw) {
		errs = append(errs, fmt.Errorf("bridge %s lacks the gateway address %s", name, gw))
	}
	return br.Attrs().Index, errors.Join(errs...)
}

func checkHostVeth(h *netlink.Handle, name string, brIndex int, hairpin bool) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host interface %s: %w", name, err)
	}
	var errs []error
	if brIndex != 0 && l.Attrs().MasterIndex != brIndex {
		errs = append(errs, fmt.Errorf("host interface %s is not attached to the bridge", name))
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		errs = append(errs, fmt.Errorf("host interface %s is down", name))
	}
	if p, err := h.LinkGetProtinfo(l); err != nil {
		errs = append(errs, fmt.Errorf("host interface %s: bridge port flags: %w", name, err))
	} else if p.Hairpin != hairpin {
		errs = append(errs, fmt.Errorf("host interface %s: hairpin mode is %t, want %t", name, p.Hairpin, hairpin))
	}
	return errors.Join(errs...)
}

func checkContainer(cns ns.NetNS, ifName string, addr netip.Prefix, mtu int, gw netip.Addr, routes []netip.Prefix) error {
	ch, err := netlink.NewHandleAt(netns.NsHandle(cns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink in the container's namespace: %w", err)
	}
	defer ch.Close()
	l, err := ch.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("container interface %s: %w", ifName, err)
	}
	var errs []error
	if l.Attrs().Flags&net.FlagUp == 0 {
		errs = append(errs, fmt.Errorf("container interface %s is down", ifName))
	}
	if l.Attrs().MTU != mtu {
		errs = append(errs, fmt.Errorf("container interface %s has MTU %d, want %d", ifName, l.Attrs().MTU, mtu))
	}
	if !hasAddr(ch, l, addr) {
		errs = append(errs, fmt.Errorf("container interface %s lacks address %s", ifName, addr))
	}
	have, err := ch.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("container routes: %w", err))...)
	}
	for _, want := range routes {
		found := false
		for _, r := range have {
			dst := netip.MustParsePrefix("0.0.0.0/0")
			if r.Dst != nil {
				dst, _ = prefixOf(r.Dst)
			}
			g, _ := netip.AddrFromSlice(r.Gw)
			if dst == want && g.Unmap() == gw {
				found = true
				break
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("container lacks the route %s via %s", want, gw))
		}
	}
	return errors.Join(errs...)
}

func hasAddr(h *netlink.Handle, l netlink.Link, want netip.Prefix) bool {
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p == want {
			return true
		}
	}
	return false
}
