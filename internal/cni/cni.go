// Package cni is the weft CNI plugin: it attaches a container to its host's
// bridge with an address from the host's subnet (read from subnet.env, which
// weftd writes), keeps allocations on disk under a file lock, and answers
// every command of CNI 1.1 (ADD, DEL, CHECK, STATUS, GC; VERSION through
// skel). It replaces flannel's plugin + bridge + host-local chain with one
// process and reads flannel's conflists ("delegate" and all).
//
// Every command runs in the host's network namespace (where the runtime
// executes the plugin); the container's namespace is reached with a netlink
// handle bound to it, so no thread ever switches namespaces.
package cni

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/subnetenv"
)

// Versions are the CNI spec versions the plugin speaks: 1.1.0 and every
// older one (a configuration without cniVersion is 0.1.0).
var Versions = version.All

// About is printed when the plugin is run without CNI_COMMAND.
const About = "weft CNI plugin: attaches containers to the Weft network (subnet from weftd's subnet.env)"

// Plugin carries out the CNI commands.
type Plugin struct {
	// Stdout receives results.
	Stdout io.Writer
}

// Funcs returns the command table for skel.PluginMainFuncs, writing results
// to os.Stdout.
func Funcs() skel.CNIFuncs {
	p := &Plugin{Stdout: os.Stdout}
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

// readEnv reads subnet.env, turning its absence into the CNI error that
// says weftd is not ready.
func readEnv(conf *NetConf, code uint) (subnetenv.Env, error) {
	env, err := subnetenv.Read(conf.SubnetFile)
	if errors.Is(err, subnetenv.ErrNotReady) {
		return env, types.NewError(code, fmt.Sprintf("weftd is not ready on this host: %s does not exist yet (weftd writes it once it holds a subnet lease); retry when weftd is running", conf.SubnetFile), "")
	}
	if err != nil {
		return env, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("cannot use the host's subnet file (netconf subnetFile): %v", err), "")
	}
	if !env.Network.IsValid() || !env.Subnet.Addr().Is4() || !env.Network.Contains(env.Subnet.Addr()) {
		return env, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("%s: FLANNEL_SUBNET %s is not inside FLANNEL_NETWORK %s", conf.SubnetFile, env.Subnet, env.Network), "")
	}
	if env.MTU == 0 {
		env.MTU = 1500
	}
	return env, nil
}

func (c *NetConf) mtu(env subnetenv.Env) int {
	if c.MTU != 0 {
		return c.MTU
	}
	return env.MTU
}

func (c *NetConf) routes(env subnetenv.Env) []netip.Prefix {
	if c.IsDefaultGateway {
		return []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	}
	return []netip.Prefix{env.Network}
}

// Add attaches the container: bridge, veth pair, address, routes.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	env, err := readEnv(conf, types.ErrTryAgainLater)
	if err != nil {
		return err
	}
	cns, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("cannot open the container's network namespace %q: %v", args.Netns, err), "")
	}
	defer cns.Close()

	store, err := OpenStore(conf.DataDir, conf.Name)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer store.Close()
	pool := Pool{Subnet: env.HostSubnet(), Gateway: env.Gateway()}
	var addr netip.Addr
	err = store.Locked(func() (err error) {
		addr, err = store.Allocate(args.ContainerID, args.IfName, pool)
		return err
	})
	if errors.Is(err, ErrPoolExhausted) {
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	hostName := hostVethName(conf.Name, args.ContainerID, args.IfName)
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	success := false
	defer func() {
		if success {
			return
		}
		// Undo: the veth pair (both ends go with the host end) and the address.
		if l, lerr := h.LinkByName(hostName); lerr == nil {
			_ = h.LinkDel(l)
		}
		_ = store.Locked(func() error { _, err := store.Release(args.ContainerID, args.IfName); return err })
	}()

	gw := netip.PrefixFrom(env.Gateway(), env.Subnet.Bits())
	br, err := ensureBridge(h, conf.Bridge, gw, env.Network)
	if err != nil {
		return err
	}
	if err := ensureForwarding(); err != nil {
		return err
	}
	mtu := conf.mtu(env)
	host, err := addVeth(h, vethSpec{hostName: hostName, ifName: args.IfName, mtu: mtu, bridge: br, hairpin: conf.HairpinMode, container: int(cns.Fd()), mac: podMAC(addr)})
	if err != nil {
		return err
	}
	ch, err := netlink.NewHandleAt(netns.NsHandle(cns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink in the container's namespace: %w", err)
	}
	defer ch.Close()
	podAddr := netip.PrefixFrom(addr, env.Subnet.Bits())
	routes := conf.routes(env)
	cont, err := configureContainer(ch, args.IfName, podAddr, env.Gateway(), routes)
	if err != nil {
		return err
	}
	if masqOn(conf, env) {
		if err := masq.Ensure(env.Network, env.HostSubnet()); err != nil {
			return fmt.Errorf("ipMasq: %w", err)
		}
	}

	result := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: br.Attrs().Name, Mac: br.Attrs().HardwareAddr.String()},
			{Name: host.Attrs().Name, Mac: host.Attrs().HardwareAddr.String()},
			{Name: args.IfName, Mac: cont.Attrs().HardwareAddr.String(), Sandbox: args.Netns, Mtu: mtu},
		},
		IPs: []*types100.IPConfig{{Interface: types100.Int(2), Address: *ipNet(podAddr), Gateway: ipNet(gw).IP}},
		DNS: conf.DNS,
	}
	for _, r := range routes {
		result.Routes = append(result.Routes, &types.Route{Dst: *ipNet(r), GW: ipNet(gw).IP})
	}
	out, err := result.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, err.Error(), "")
	}
	if err := out.PrintTo(p.Stdout); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("write result: %v", err), "")
	}
	success = true
	return nil
}

// masqOn reports whether the plugin should make sure pod egress is
// masqueraded: when asked (ipMasq), or by default when weftd does not.
func masqOn(conf *NetConf, env subnetenv.Env) bool {
	if conf.IPMasq != nil {
		return *conf.IPMasq
	}
	return !env.IPMasq
}

// Del detaches the container and frees its address. It succeeds when there
// is nothing left to do: a missing namespace, an unknown container, a second
// DEL. It does not need subnet.env, so it works while weftd is down.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	var errs []error
	store, err := OpenStore(conf.DataDir, conf.Name)
	if err != nil {
		errs = append(errs, err)
	} else {
		defer store.Close()
		errs = append(errs, store.Locked(func() error { _, err := store.Release(args.ContainerID, args.IfName); return err }))
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("netlink: %w", err))...)
	}
	defer h.Close()
	// Deleting the host end takes the container end with it; only when
	// there is no host end of weft's naming look inside the container.
	found, err := removeHostVeth(h, hostVethName(conf.Name, args.ContainerID, args.IfName))
	errs = append(errs, err)
	if !found {
		errs = append(errs, removeContainerLink(args.Netns, args.IfName))
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	return nil
}

// removeContainerLink deletes the container's interface if its namespace
// and the interface still exist (a veth made by another plugin, such as
// flannel's bridge, has a host end whose name weft cannot derive).
func removeContainerLink(nsPath, ifName string) error {
	if nsPath == "" {
		return nil
	}
	cns, err := ns.GetNS(nsPath)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		if errors.As(err, &notExist) || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		// A path that is no namespace any more (unmounted) is gone as well.
		var notNS ns.NSPathNotNSErr
		if errors.As(err, &notNS) {
			return nil
		}
		return fmt.Errorf("container namespace %s: %w", nsPath, err)
	}
	defer cns.Close()
	ch, err := netlink.NewHandleAt(netns.NsHandle(cns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink in the container's namespace: %w", err)
	}
	defer ch.Close()
	l, err := ch.LinkByName(ifName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("container interface %s: %w", ifName, err)
	}
	if _, ok := l.(*netlink.Veth); !ok {
		return nil // not ours to delete
	}
	if err := ch.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete container interface %s: %w", ifName, err)
	}
	return nil
}

// removeHostVeth deletes the host end of a pair and reports whether there
// was one.
func removeHostVeth(h *netlink.Handle, name string) (bool, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("host interface %s: %w", name, err)
	}
	if _, ok := l.(*netlink.Veth); !ok {
		return false, nil
	}
	if err := h.LinkDel(l); err != nil && !isNotFound(err) {
		return true, fmt.Errorf("delete host interface %s: %w", name, err)
	}
	return true, nil
}

// isNotFound reports whether err says the link is gone already (someone
// else, or the namespace's end, removed it first).
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, fs.ErrNotExist)
}

// Status reports whether the plugin can serve ADD: weftd has written
// subnet.env and the allocation directory is usable.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	if _, err := readEnv(conf, types.ErrPluginNotAvailable); err != nil {
		return err
	}
	store, err := OpenStore(conf.DataDir, conf.Name)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("allocation directory (netconf dataDir) is not usable: %v", err), "")
	}
	return store.Close()
}

// GC frees the allocations (and any leftover host interfaces) of
// attachments the runtime no longer has: every attachment not listed in
// cni.dev/valid-attachments.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	if !conf.HasAttachments {
		// Without the list every allocation would look stale: refuse
		// rather than free the addresses of running containers.
		return fieldErr(types.ErrInvalidNetworkConfig, "cni.dev/valid-attachments", "is required for GC (the attachments the runtime still has; an empty list frees everything)")
	}
	valid := make(map[types.GCAttachment]bool, len(conf.ValidAttachments))
	ids := make(map[string]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[a] = true
		ids[a.ContainerID] = true
	}
	store, err := OpenStore(conf.DataDir, conf.Name)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer store.Close()
	var freed []Allocation
	err = store.Locked(func() (err error) {
		freed, err = store.Retain(func(id, ifname string) bool {
			if ifname == "" {
				return ids[id]
			}
			return valid[types.GCAttachment{ContainerID: id, IfName: ifname}]
		})
		return err
	})
	errs := []error{err}
	if len(freed) > 0 {
		h, herr := netlink.NewHandle(unix.NETLINK_ROUTE)
		if herr != nil {
			errs = append(errs, fmt.Errorf("netlink: %w", herr))
		} else {
			for _, a := range freed {
				if a.IfName != "" {
					_, err := removeHostVeth(h, hostVethName(conf.Name, a.ContainerID, a.IfName))
					errs = append(errs, err)
				}
			}
			h.Close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	return nil
}
