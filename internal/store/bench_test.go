package store

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/etcdserver/etcdtest"
	"github.com/weft-net/weft/internal/lease"
)

// BenchmarkAcquire measures one host joining a network that already holds
// 5000 leases: one range read, one grant, one transaction, whatever the
// number of leases.
func BenchmarkAcquire(b *testing.B) {
	ep := etcdtest.Start(b)
	ctx := context.Background()
	s, err := New(ctx, Options{Endpoints: []string{ep}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	n, err := config.Parse([]byte(`{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		b.Fatal(err)
	}
	existing := make([]lease.Lease, 0, 5000)
	for i := range 5000 {
		existing = append(existing, lease.Lease{Subnet: n.SubnetAt(uint64(i)), Attrs: lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), BackendType: "host-gw"}})
	}
	if err := s.PutLeases(ctx, existing, time.Hour); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		attrs := lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), BackendType: "host-gw"}
		if _, err := s.Acquire(ctx, AcquireRequest{Network: n, Attrs: attrs, TTL: time.Hour}); err != nil {
			b.Fatal(fmt.Errorf("acquire %d: %w", i, err))
		}
	}
}
