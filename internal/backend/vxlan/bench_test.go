package vxlan

import (
	"context"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/backend/vxlan/peergen"
	"github.com/weft-net/weft/internal/lease"
)

// BenchmarkReconcile5000 measures one host (the backend alone, in a test
// namespace) programming 5000 synthetic peers from nothing ("program": the
// time of one Reconcile that adds 5000 routes, neighbours and FDB entries,
// followed by an untimed removal of all of them), and a periodic resync
// that finds nothing to change ("resync"). Run:
//
//	go test -run '^$' -bench Reconcile5000 -benchmem ./internal/backend/vxlan
func BenchmarkReconcile5000(b *testing.B) {
	l := newLab(b, `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`)
	h := l.addHost("br0", netip.MustParsePrefix("198.18.0.11/24"), netip.Addr{})
	l.start(h, "")
	peers, err := peergen.Leases(l.netCfg, peergen.Options{Count: 5000, BackendType: "vxlan", Taken: map[netip.Prefix]bool{h.subnet: true}})
	if err != nil {
		b.Fatal(err)
	}
	none := []lease.Lease{h.lease()}
	ctx := context.Background()
	b.Run("program", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := h.be.Reconcile(ctx, peers); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := h.be.Reconcile(ctx, none); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	if err := h.be.Reconcile(ctx, peers); err != nil {
		b.Fatal(err)
	}
	b.Run("resync", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := h.be.Reconcile(ctx, peers); err != nil {
				b.Fatal(err)
			}
		}
	})
}
