package vxlan

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netnsutil"
	"github.com/weft-net/weft/internal/routes"
)

const testNet = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`

func threeHosts(t *testing.T, netJSON string) *lab {
	l := newLab(t, netJSON)
	for i := 1; i <= 3; i++ {
		l.addHost("br0", netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}), 24), netip.Addr{})
	}
	return l
}

func TestStaticThreeHosts(t *testing.T) {
	l := threeHosts(t, testNet)
	for _, h := range l.hosts {
		l.start(h, "")
	}
	l.reconcileAll()
	l.allPairs()

	// The device looks as flannel's.
	h := l.hosts[0]
	link, err := h.handle.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	v := link.(*netlink.Vxlan)
	if v.VxlanId != 1 || v.Port != 8472 || v.Learning || v.MTU != 1450 {
		t.Errorf("device: VNI %d port %d learning %v MTU %d; want 1, 8472, false, 1450", v.VxlanId, v.Port, v.Learning, v.MTU)
	}
	addrs, _ := h.handle.AddrList(link, unix.AF_INET)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.244.1.0/32" {
		t.Errorf("device addresses %v, want 10.244.1.0/32", addrs)
	}
	// Permanent entries and onlink routes for both peers.
	neighs, _ := h.handle.NeighList(v.Index, unix.AF_INET)
	perm := 0
	for _, n := range neighs {
		if n.State == netlink.NUD_PERMANENT {
			perm++
		}
	}
	if perm != 2 {
		t.Errorf("%d permanent neighbours, want 2: %v", perm, neighs)
	}
	rs, _ := h.handle.RouteList(link, unix.AF_INET)
	onlink := 0
	for _, r := range rs {
		if r.Protocol == routes.Protocol && r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			onlink++
		}
	}
	if onlink != 2 {
		t.Errorf("%d onlink routes of protocol 87, want 2: %v", onlink, rs)
	}

	// A second Reconcile changes nothing.
	tbl := h.be.table.Load()
	st0, err := h.be.syncEntries(v.Index, tbl, h.subnet)
	if err != nil || st0.changed() {
		t.Fatalf("second sync: %+v %v", st0, err)
	}

	// A neighbour with a wrong MAC is repaired by one Reconcile.
	wrong := net.HardwareAddr{0x0e, 0, 0, 0, 0xbe, 0xef}
	if err := h.handle.NeighSet(&netlink.Neigh{LinkIndex: v.Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: net.IPv4(10, 244, 2, 0), HardwareAddr: wrong}); err != nil {
		t.Fatal(err)
	}
	if err := h.be.Reconcile(context.Background(), l.leases()); err != nil {
		t.Fatal(err)
	}
	neighs, _ = h.handle.NeighList(v.Index, unix.AF_INET)
	fixed := false
	for _, n := range neighs {
		if n.IP.Equal(net.IPv4(10, 244, 2, 0)) && n.HardwareAddr.String() == l.hosts[1].be.VtepMAC() && n.State == netlink.NUD_PERMANENT {
			fixed = true
		}
	}
	if !fixed {
		t.Errorf("wrong neighbour MAC not repaired by one Reconcile: %v", neighs)
	}
	// So is an FDB entry pointing at a wrong underlay address.
	mac2, _ := net.ParseMAC(l.hosts[1].be.VtepMAC())
	if err := h.handle.NeighSet(&netlink.Neigh{LinkIndex: v.Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT, HardwareAddr: mac2, IP: net.IPv4(198, 18, 0, 99)}); err != nil {
		t.Fatal(err)
	}
	if err := h.be.Reconcile(context.Background(), l.leases()); err != nil {
		t.Fatal(err)
	}
	fdb, _ := h.handle.NeighList(v.Index, unix.AF_BRIDGE)
	var dsts []string
	for _, f := range fdb {
		if f.HardwareAddr.String() == mac2.String() {
			dsts = append(dsts, f.IP.String())
		}
	}
	if len(dsts) != 1 || dsts[0] != "198.18.0.12" {
		t.Errorf("FDB destinations of h2's MAC after one Reconcile: %v, want [198.18.0.12]", dsts)
	}
	waitPing(t, h, l.hosts[1].podIP, 3*time.Second)
	st, err := h.be.syncEntries(v.Index, tbl, h.subnet)
	if err != nil {
		t.Fatal(err)
	}
	if st.changed() {
		t.Errorf("second sync changed something: %+v", st)
	}
}

func TestDeviceDeletedHealedAndMACStable(t *testing.T) {
	l := threeHosts(t, testNet)
	for _, h := range l.hosts {
		l.start(h, "")
	}
	l.reconcileAll()
	h := l.hosts[0]
	mac := h.be.VtepMAC()
	link, _ := h.handle.LinkByName("flannel.1")
	if err := h.handle.LinkDel(link); err != nil {
		t.Fatal(err)
	}
	if ping(h, l.hosts[1].podIP) {
		t.Fatal("ping works without the device")
	}
	if err := h.be.Reconcile(context.Background(), l.leases()); err != nil {
		t.Fatal(err)
	}
	l.allPairs()
	if got := h.be.VtepMAC(); got != mac {
		t.Errorf("VtepMAC changed from %s to %s", mac, got)
	}
	link, _ = h.handle.LinkByName("flannel.1")
	if link.Attrs().HardwareAddr.String() != mac {
		t.Errorf("recreated device has MAC %s, want %s", link.Attrs().HardwareAddr, mac)
	}

	// Restart: a new backend on the same state directory keeps the MAC and
	// leaves traffic untouched.
	l.start(h, "")
	if got := h.be.VtepMAC(); got != mac {
		t.Errorf("VtepMAC after restart %s, want %s", got, mac)
	}
	l.reconcileAll()
	l.allPairs()

	// Reboot with the state lost: the device is gone and so is the state
	// directory; the derived MAC is the same.
	link, _ = h.handle.LinkByName("flannel.1")
	_ = h.handle.LinkDel(link)
	h.state = t.TempDir()
	l.start(h, "")
	if got := h.be.VtepMAC(); got != mac {
		t.Errorf("VtepMAC after reboot without state %s, want %s", got, mac)
	}
}

func TestPeersThatLeftAreRemovedAtStart(t *testing.T) {
	l := threeHosts(t, testNet)
	for _, h := range l.hosts {
		l.start(h, "")
	}
	l.reconcileAll()
	h := l.hosts[0]
	// A foreign route inside the network and a neighbour on another device
	// must survive.
	cni, _ := h.handle.LinkByName("cni0")
	foreign := &netlink.Route{Dst: mustIPNet("10.244.200.0/24"), Gw: []byte{10, 244, 1, 99}, LinkIndex: cni.Attrs().Index, Protocol: unix.RTPROT_STATIC}
	if err := h.handle.RouteAdd(foreign); err != nil {
		t.Fatal(err)
	}
	// Restart with host 3 gone.
	l.start(h, "")
	if err := h.be.Reconcile(context.Background(), l.leases()[:2]); err != nil {
		t.Fatal(err)
	}
	waitPing(t, h, l.hosts[1].podIP, 3*time.Second)
	link, _ := h.handle.LinkByName("flannel.1")
	neighs, _ := h.handle.NeighList(link.Attrs().Index, unix.AF_INET)
	for _, n := range neighs {
		if n.IP.String() == "10.244.3.0" {
			t.Errorf("neighbour of departed host 3 still present: %v", n)
		}
	}
	fdb, _ := h.handle.NeighList(link.Attrs().Index, unix.AF_BRIDGE)
	for _, f := range fdb {
		if f.HardwareAddr.String() == l.hosts[2].be.VtepMAC() {
			t.Errorf("FDB entry of departed host 3 still present: %v", f)
		}
	}
	rs, _ := h.handle.RouteList(nil, unix.AF_INET)
	sawForeign := false
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == "10.244.3.0/24" {
			t.Errorf("route to departed host 3 still present: %v", r)
		}
		if r.Dst != nil && r.Dst.String() == "10.244.200.0/24" {
			sawForeign = true
		}
	}
	if !sawForeign {
		t.Error("a route Weft did not make was removed")
	}
}

func TestMalformedVtepMACSkipped(t *testing.T) {
	l := threeHosts(t, testNet)
	for _, h := range l.hosts {
		l.start(h, "")
	}
	ls := l.leases()
	ls[2].Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"not-a-mac"}`)
	var errs []string
	for _, h := range l.hosts[:2] {
		err := h.be.Reconcile(context.Background(), ls)
		if err == nil || !strings.Contains(err.Error(), "VtepMAC") || !strings.Contains(err.Error(), "10.244.3.0/24") {
			t.Errorf("host %d: error %v, want one naming lease 10.244.3.0/24 and VtepMAC", h.i, err)
		}
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	waitPing(t, l.hosts[0], l.hosts[1].podIP, 3*time.Second)
	waitPing(t, l.hosts[1], l.hosts[0].podIP, 3*time.Second)
}

func TestMismatchedDeviceReplaced(t *testing.T) {
	l := newLab(t, testNet)
	h := l.addHost("br0", netip.MustParsePrefix("198.18.0.11/24"), netip.Addr{})
	if err := h.handle.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "flannel.1"}, VxlanId: 5, Port: 4789, Learning: true}); err != nil {
		t.Fatal(err)
	}
	l.start(h, "")
	link, err := h.handle.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	v := link.(*netlink.Vxlan)
	if v.VxlanId != 1 || v.Port != 8472 || v.Learning {
		t.Errorf("device not replaced: VNI %d port %d learning %v", v.VxlanId, v.Port, v.Learning)
	}
}

func mustIPNet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestSegmentationOffloadRestored(t *testing.T) {
	l := newLab(t, testNet)
	h := l.addHost("br0", netip.MustParsePrefix("198.18.0.11/24"), netip.Addr{})
	l.start(h, "")
	feature := func(name string) (on bool) {
		err := netnsutil.Do(h.nsh, func() error {
			e, err := ethtool.NewEthtool()
			if err != nil {
				return err
			}
			defer e.Close()
			f, err := e.Features("flannel.1")
			on = f[name]
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return on
	}
	if !feature("tx-tcp-segmentation") || !feature(txCsumFeature) {
		t.Fatal("a new device lacks TSO or checksum offload")
	}
	if err := netnsutil.Do(h.nsh, func() error {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer e.Close()
		return e.Change("flannel.1", map[string]bool{"tx-tcp-segmentation": false})
	}); err != nil {
		t.Fatal(err)
	}
	if feature("tx-tcp-segmentation") {
		t.Fatal("could not turn TSO off for the test")
	}
	l.start(h, "") // a restart adopts the device and repairs it
	if !feature("tx-tcp-segmentation") {
		t.Error("TSO still off after weftd's start")
	}
	// BIG TCP switched on by hand is switched off again.
	link, _ := h.handle.LinkByName("flannel.1")
	if err := h.handle.LinkSetGSOIPv4MaxSize(link, 131072); err != nil {
		t.Fatal(err)
	}
	if err := h.handle.LinkSetGSOMaxSize(link, 131072); err != nil {
		t.Fatal(err)
	}
	if err := h.be.Reconcile(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	link, _ = h.handle.LinkByName("flannel.1")
	if a := link.Attrs(); a.GSOMaxSize > bigTCPLimit || a.GSOIPv4MaxSize > bigTCPLimit {
		t.Errorf("BIG TCP left on: gso_max_size %d gso_ipv4_max_size %d", a.GSOMaxSize, a.GSOIPv4MaxSize)
	}
	// Forced off: checksum offload goes (and TSO with it).
	l.start(h, `{"Type":"vxlan","TxChecksumOffload":"off"}`)
	if feature(txCsumFeature) {
		t.Error("TxChecksumOffload off did not turn checksum offload off")
	}
}

// TestPeerMovesBetweenTunnelAndDirect: with DirectRouting, a peer whose
// PublicIP moves onto this host's segment gets a plain route instead of its
// tunnel route and entries, and back; each time exactly one route to its
// subnet is left (no stale route with another metric).
func TestPeerMovesBetweenTunnelAndDirect(t *testing.T) {
	l := newLab(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`)
	h := l.addHost("br0", netip.MustParsePrefix("198.18.0.11/24"), netip.Addr{})
	l.start(h, "")
	sub := netip.MustParsePrefix("10.244.3.0/24")
	peerAt := func(pub string) []lease.Lease {
		return []lease.Lease{h.lease(), {Subnet: sub, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(pub), BackendType: "vxlan",
			BackendData: []byte(`{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"}`)}}}
	}
	routesTo := func() []string {
		rs, err := h.handle.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: mustIPNet(sub.String()), Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rs {
			dev, _ := h.handle.LinkByIndex(r.LinkIndex)
			out = append(out, r.Gw.String()+" "+dev.Attrs().Name)
		}
		return out
	}
	link, _ := h.handle.LinkByName("flannel.1")
	for _, step := range []struct{ pub, want string }{
		{"198.19.0.5", "10.244.3.0 flannel.1"},
		{"198.18.0.77", "198.18.0.77 eth0"},
		{"198.19.0.5", "10.244.3.0 flannel.1"},
	} {
		if err := h.be.Reconcile(context.Background(), peerAt(step.pub)); err != nil {
			t.Fatal(err)
		}
		if got := routesTo(); len(got) != 1 || got[0] != step.want {
			t.Errorf("peer at %s: routes %v, want [%s]", step.pub, got, step.want)
		}
		if n := countEntries(t, h, link.Attrs().Index); (step.want == "198.18.0.77 eth0") != (n == 0) {
			t.Errorf("peer at %s: %d tunnel entries", step.pub, n)
		}
	}
	// A second Weft route to the same destination with another metric (a
	// leftover) is collapsed into one.
	extra := &netlink.Route{Dst: mustIPNet(sub.String()), Gw: []byte{10, 244, 3, 0}, LinkIndex: link.Attrs().Index, Flags: int(netlink.FLAG_ONLINK), Protocol: 87, Priority: 9999}
	if err := h.handle.RouteAdd(extra); err != nil {
		t.Fatal(err)
	}
	if err := h.be.Reconcile(context.Background(), peerAt("198.19.0.5")); err != nil {
		t.Fatal(err)
	}
	if got := routesTo(); len(got) != 1 {
		t.Errorf("duplicate Weft route not collapsed: %v", got)
	}
}
