// Package peergen makes synthetic peer leases for control-plane tests and
// benchmarks: N leases with public addresses from 198.19.0.0/16 (a range no
// real Weft host uses), so anyone can load a cluster of thousands of peers
// into etcd and watch how fast a host programs them.
package peergen

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// Range is where synthetic peers' public addresses come from.
var Range = netip.MustParsePrefix("198.19.0.0/16")

// MaxCount is the most peers Leases makes (the addresses of Range minus
// its network and broadcast addresses).
const MaxCount = 1<<16 - 2

// IsSynthetic reports whether l was made by this package.
func IsSynthetic(l lease.Lease) bool { return Range.Contains(l.Attrs.PublicIP) }

// Options say what to make.
type Options struct {
	// Count is the number of peers.
	Count int
	// BackendType is written as the leases' BackendType ("vxlan",
	// "host-gw", "" for udp).
	BackendType string
	// VNI goes into vxlan BackendData (default 1).
	VNI int
	// Taken are subnets already leased, left alone.
	Taken map[netip.Prefix]bool
}

// Leases returns o.Count leases in n's subnets, from SubnetMax downwards
// (real hosts usually start at SubnetMin), skipping taken subnets. Peer i
// gets public address 198.19.0.0 + i + 1 and, for vxlan, a VtepMAC derived
// from it.
func Leases(n *config.Network, o Options) ([]lease.Lease, error) {
	if o.Count < 0 || o.Count > MaxCount {
		return nil, fmt.Errorf("%d peers is out of range 0-%d", o.Count, MaxCount)
	}
	free := n.SubnetCount() - uint64(len(o.Taken))
	if uint64(o.Count) > free {
		return nil, fmt.Errorf("%d peers do not fit: the network %s has %d free subnets", o.Count, n.Network, free)
	}
	vni := o.VNI
	if vni == 0 {
		vni = 1
	}
	out := make([]lease.Lease, 0, o.Count)
	total := n.SubnetCount()
	base := Range.Addr().As4()
	for i := uint64(0); len(out) < o.Count && i < total; i++ {
		sub := n.SubnetAt(total - 1 - i)
		if o.Taken[sub] {
			continue
		}
		k := uint32(len(out) + 1)
		pub := netip.AddrFrom4([4]byte{base[0], base[1], byte(k >> 8), byte(k)})
		a := lease.Attrs{PublicIP: pub, BackendType: o.BackendType}
		if o.BackendType == "vxlan" {
			data, err := json.Marshal(struct {
				VNI     int    `json:"VNI"`
				VtepMAC string `json:"VtepMAC"`
			}{vni, mac(pub).String()})
			if err != nil {
				return nil, err
			}
			a.BackendData = data
		}
		out = append(out, lease.Lease{Subnet: sub, Attrs: a})
	}
	return out, nil
}

// mac is a locally administered unicast MAC derived from the address.
func mac(a netip.Addr) net.HardwareAddr {
	sum := sha256.Sum256(a.AsSlice())
	m := net.HardwareAddr(sum[:6])
	m[0] = m[0]&^1 | 2
	return m
}
