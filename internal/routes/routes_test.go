package routes

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/netnsutil/nstest"
	"golang.org/x/sys/unix"
)

func TestSync(t *testing.T) {
	ns := nstest.New(t, "wrt-")
	nl := ns.Netlink
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0"}, PeerName: "ul1"}); err != nil {
		t.Fatal(err)
	}
	ul0, _ := nl.LinkByName("ul0")
	ul1, _ := nl.LinkByName("ul1")
	addr, _ := netlink.ParseAddr("198.18.3.1/24")
	nl.AddrAdd(ul0, addr)
	nl.LinkSetUp(ul0)
	nl.LinkSetUp(ul1)
	idx := ul0.Attrs().Index
	// Someone else's route identical to one Weft wants: adopted.
	_, dst, _ := net.ParseCIDR("10.99.1.0/24")
	if err := nl.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP("198.18.3.2"), LinkIndex: idx}); err != nil {
		t.Fatal(err)
	}
	desired := []Route{
		{Dst: netip.MustParsePrefix("10.99.1.0/24"), Gw: netip.MustParseAddr("198.18.3.2"), LinkIndex: idx},
		{Dst: netip.MustParsePrefix("10.99.2.0/24"), Gw: netip.MustParseAddr("198.18.3.3"), LinkIndex: idx},
		{Dst: netip.MustParsePrefix("10.99.3.0/24"), Gw: netip.MustParseAddr("198.18.9.9"), LinkIndex: idx, OnLink: true},
	}
	res, err := Sync(nl, unix.AF_INET, desired, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 3 {
		t.Fatalf("first sync: %+v", res)
	}
	res, err = Sync(nl, unix.AF_INET, desired, nil)
	if err != nil || res.Unchanged != 3 || res.Added+res.Replaced+res.Removed != 0 {
		t.Fatalf("second sync changed something: %+v %v", res, err)
	}
	// A changed next hop is replaced; a dropped route removed.
	desired[1].Gw = netip.MustParseAddr("198.18.3.4")
	res, err = Sync(nl, unix.AF_INET, desired[:2], nil)
	if err != nil || res.Replaced != 1 || res.Removed != 1 || res.Unchanged != 1 {
		t.Fatalf("third sync: %+v %v", res, err)
	}
	rs, _ := nl.RouteList(nil, unix.AF_INET)
	got := map[string]string{}
	for _, r := range rs {
		if r.Dst == nil || !netip.MustParsePrefix("10.99.0.0/16").Contains(netip.MustParseAddr(r.Dst.IP.String())) {
			continue
		}
		if r.Protocol != Protocol {
			t.Errorf("route %s not Weft's left in place (the identical one should have been taken over)", r.Dst)
			continue
		}
		dst := netip.MustParsePrefix(r.Dst.String())
		if uint32(r.Priority) != Metric(dst) {
			t.Errorf("route %s has metric %d, want %d", dst, r.Priority, Metric(dst))
		}
		got[r.Dst.String()] = r.Gw.String()
	}
	if len(got) != 2 || got["10.99.2.0/24"] != "198.18.3.4" || got["10.99.1.0/24"] != "198.18.3.2" {
		t.Fatalf("routes: %v", got)
	}
	// The owned filter keeps Sync away from routes outside its scope.
	res, err = Sync(nl, unix.AF_INET, nil, func(r Route) bool { return r.Dst.Addr() == netip.MustParseAddr("10.99.2.0") })
	if err != nil || res.Removed != 1 {
		t.Fatalf("scoped sync: %+v %v", res, err)
	}
	rs, _ = nl.RouteList(nil, unix.AF_INET)
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == "10.99.1.0/24" {
			return
		}
	}
	t.Fatal("route outside the owned scope was removed")
}
