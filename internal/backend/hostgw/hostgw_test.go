package hostgw

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netnsutil/nstest"
	"github.com/weft-net/weft/internal/routes"
	"golang.org/x/sys/unix"
)

func peer(subnet, ip, typ string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: typ}}
}

// routeTable returns the namespace's IPv4 main-table routes by destination.
func routeTable(t *testing.T, nl *netlink.Handle) map[string]netlink.Route {
	t.Helper()
	rs, err := nl.RouteList(nil, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]netlink.Route{}
	for _, r := range rs {
		if r.Dst != nil {
			m[r.Dst.String()] = r
		}
	}
	return m
}

func TestReconcileRoutes(t *testing.T) {
	ns := nstest.New(t, "wgw-")
	nl := ns.Netlink
	// The underlay: a veth with 198.18.5.1/24.
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}); err != nil {
		t.Fatal(err)
	}
	eth0, _ := nl.LinkByName("eth0")
	eth0p, _ := nl.LinkByName("eth0p")
	addr, _ := netlink.ParseAddr("198.18.5.1/24")
	if err := nl.AddrAdd(eth0, addr); err != nil {
		t.Fatal(err)
	}
	nl.LinkSetUp(eth0)
	nl.LinkSetUp(eth0p)
	// Routes an operator made: one Weft must not touch, one that conflicts
	// with a peer's subnet.
	for _, r := range []struct{ dst, gw string }{{"10.244.7.0/24", "198.18.5.7"}, {"10.244.8.0/24", "198.18.5.8"}} {
		_, dst, _ := net.ParseCIDR(r.dst)
		if err := nl.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP(r.gw), LinkIndex: eth0.Attrs().Index, Protocol: unix.RTPROT_STATIC}); err != nil {
			t.Fatal(err)
		}
	}

	n, err := config.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	be, err := Kind().New(backend.Host{Network: n, PublicIP: netip.MustParseAddr("198.18.5.1"),
		Iface: backend.Iface{Name: "eth0", Index: eth0.Attrs().Index, MTU: 1500}, Netlink: nl, Log: slog.Default()}, []byte(`{"Type":"host-gw"}`))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	local, err := be.Init(ctx)
	if err != nil || local.Type != "host-gw" || local.MTU != 1500 {
		t.Fatalf("Init = %+v, %v", local, err)
	}
	if err := be.Start(ctx, peer("10.244.1.0/24", "198.18.5.1", Type)); err != nil {
		t.Fatal(err)
	}
	peers := []lease.Lease{
		peer("10.244.2.0/24", "198.18.5.2", Type),
		peer("10.244.3.0/24", "198.18.9.3", Type), // not directly connected
		peer("10.244.4.0/24", "198.18.5.4", "vxlan"),
		peer("10.244.8.0/24", "198.18.5.9", Type), // conflicts with the operator's route
	}
	err = be.Reconcile(ctx, peers)
	if err == nil || !strings.Contains(err.Error(), "10.244.3.0/24: PublicIP 198.18.9.3 is not on a directly connected network") {
		t.Fatalf("want an error naming the unreachable peer, got %v", err)
	}
	if !strings.Contains(err.Error(), "10.244.8.0/24") {
		t.Fatalf("want the conflicting route reported, got %v", err)
	}
	rt := routeTable(t, nl)
	r, ok := rt["10.244.2.0/24"]
	if !ok || r.Gw.String() != "198.18.5.2" || r.Protocol != routes.Protocol {
		t.Fatalf("route to the reachable peer: %+v (present %v)", r, ok)
	}
	for _, absent := range []string{"10.244.3.0/24", "10.244.4.0/24"} {
		if _, ok := rt[absent]; ok {
			t.Errorf("route to %s should not exist", absent)
		}
	}
	if r := rt["10.244.8.0/24"]; r.Gw.String() != "198.18.5.8" || r.Protocol != unix.RTPROT_STATIC {
		t.Errorf("operator's route was changed: %+v", r)
	}

	// Drift: a route deleted by hand comes back on the next reconcile.
	r2 := rt["10.244.2.0/24"]
	if err := nl.RouteDel(&r2); err != nil {
		t.Fatal(err)
	}
	be.Reconcile(ctx, peers)
	if _, ok := routeTable(t, nl)["10.244.2.0/24"]; !ok {
		t.Fatal("deleted route not restored")
	}

	// A peer that leaves loses its route; the operator's routes stay.
	if err := be.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	rt = routeTable(t, nl)
	if _, ok := rt["10.244.2.0/24"]; ok {
		t.Fatal("route of a departed peer left behind")
	}
	for _, keep := range []string{"10.244.7.0/24", "10.244.8.0/24"} {
		if _, ok := rt[keep]; !ok {
			t.Errorf("operator's route %s removed", keep)
		}
	}
}

func TestOptions(t *testing.T) {
	if err := Kind().Validate([]byte(`{"Type":"host-gw"}`)); err != nil {
		t.Fatal(err)
	}
	err := Kind().Validate([]byte(`{"Type":"host-gw","VNI":1}`))
	if err == nil || !strings.Contains(err.Error(), "Backend.VNI") {
		t.Fatalf("unknown option: %v", err)
	}
}
