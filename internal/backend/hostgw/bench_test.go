package hostgw

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netnsutil/nstest"
)

// BenchmarkReconcile5000 measures one Reconcile that routes 5000 new peers
// (a fresh namespace each time) and a resync of the same 5000.
func BenchmarkReconcile5000(b *testing.B) {
	n, err := config.Parse([]byte(`{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		b.Fatal(err)
	}
	peers := make([]lease.Lease, 5000)
	for i := range peers {
		peers[i] = lease.Lease{Subnet: n.SubnetAt(uint64(i + 1)),
			Attrs: lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(2 + i%250)}), BackendType: Type}}
	}
	setup := func() backend.Backend {
		ns := nstest.New(b, "wgb-")
		nl := ns.Netlink
		if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}); err != nil {
			b.Fatal(err)
		}
		eth0, _ := nl.LinkByName("eth0")
		peer, _ := nl.LinkByName("eth0p")
		addr, _ := netlink.ParseAddr("198.18.255.1/16")
		nl.AddrAdd(eth0, addr)
		nl.LinkSetUp(eth0)
		nl.LinkSetUp(peer)
		be, err := Kind().New(backend.Host{Network: n, PublicIP: netip.MustParseAddr("198.18.255.1"),
			Iface: backend.Iface{Name: "eth0", Index: eth0.Attrs().Index, MTU: 1500}, Netlink: nl, Log: slog.New(slog.DiscardHandler)}, nil)
		if err != nil {
			b.Fatal(err)
		}
		be.Start(context.Background(), lease.Lease{Subnet: n.SubnetAt(0)})
		return be
	}
	b.Run("add", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			be := setup()
			b.StartTimer()
			if err := be.Reconcile(context.Background(), peers); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("resync", func(b *testing.B) {
		be := setup()
		if err := be.Reconcile(context.Background(), peers); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := be.Reconcile(context.Background(), peers); err != nil {
				b.Fatal(err)
			}
		}
	})
}
