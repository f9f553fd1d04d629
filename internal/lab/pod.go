package lab

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/subnetenv"
)

// PodRequest is what a [PodAttacher] needs to connect one pod.
type PodRequest struct {
	// Lab is the lab's name and Dir its directory (a place for an
	// attacher's own files, e.g. a CNI cache or IPAM state).
	Lab, Dir string
	// Host is the pod's host; Host.Netns is the namespace the attacher
	// works from (where a CNI plugin would run) and Host.SubnetFile its
	// subnet.env.
	Host HostState
	// Pod is the pod; Pod.Netns is its (already created, empty) namespace
	// and Pod.Index its number on the host, from 1. Pod.IP is empty.
	Pod PodState
	// Env is the host's subnet.env, as weftd wrote it.
	Env subnetenv.Env
}

// PodAttacher connects a pod's namespace to its host: an interface eth0 in
// the pod with an address from the host's subnet and a default route. The
// lab's own [BridgeAttacher] does it with netlink; a CNI attacher runs
// Weft's CNI plugin instead.
type PodAttacher interface {
	// Name names the attacher in lab.json (e.g. "bridge", "cni").
	Name() string
	// Attach connects the pod and returns its address.
	Attach(ctx context.Context, req PodRequest) (netip.Addr, error)
}

// BridgeAttacher connects pods the way flannel's usual CNI set-up does: a
// bridge cni0 on the host holding the gateway address (the subnet's first
// address), one veth per pod with its host end on cni0, and in the pod eth0
// with address gateway+index and a default route via the gateway, all at
// the MTU from subnet.env.
type BridgeAttacher struct{}

// Name implements [PodAttacher].
func (BridgeAttacher) Name() string { return "bridge" }

// Attach implements [PodAttacher].
func (BridgeAttacher) Attach(ctx context.Context, req PodRequest) (netip.Addr, error) {
	set := newNSSet()
	defer set.close()
	_, hh, err := set.open(req.Host.Netns)
	if err != nil {
		return netip.Addr{}, err
	}
	pns, ph, err := set.open(req.Pod.Netns)
	if err != nil {
		return netip.Addr{}, err
	}
	gw := req.Env.Gateway()
	addr := gw
	for range req.Pod.Index {
		addr = addr.Next()
	}
	if !req.Env.HostSubnet().Contains(addr) || !req.Env.HostSubnet().Contains(addr.Next()) {
		return netip.Addr{}, fmt.Errorf("lab: pod %s: index %d does not fit in subnet %s", req.Pod.Name, req.Pod.Index, req.Env.HostSubnet())
	}
	br, err := ensureBridge(hh, "cni0", req.Env.MTU)
	if err != nil {
		return netip.Addr{}, err
	}
	if err := ensureAddr(hh, br, req.Env.Subnet); err != nil {
		return netip.Addr{}, err
	}
	if _, err := setUp(ph, "lo"); err != nil {
		return netip.Addr{}, err
	}
	eth0, err := addVeth(hh, fmt.Sprintf("vp%d", req.Pod.Index), br, pns, ph, "eth0", req.Env.MTU)
	if err != nil {
		return netip.Addr{}, err
	}
	if err := ensureAddr(ph, eth0, netip.PrefixFrom(addr, req.Env.Subnet.Bits())); err != nil {
		return netip.Addr{}, err
	}
	def := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()}
	if err := ph.RouteReplace(def); err != nil {
		return netip.Addr{}, fmt.Errorf("lab: pod %s: default route via %s: %w", req.Pod.Name, gw, err)
	}
	return addr, nil
}
