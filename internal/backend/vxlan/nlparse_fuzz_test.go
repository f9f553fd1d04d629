package vxlan

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzParseNetlink feeds arbitrary bytes to the decoders of the kernel's
// neighbour and route messages: they must never panic, and what they
// accept must be well-formed.
func FuzzParseNetlink(f *testing.F) {
	neigh := appendNdmsg(nil, unix.AF_INET, 5, 0x80, 0, netip.MustParseAddr("10.244.2.0"), &hwAddr{0x0e, 1, 2, 3, 4, 5})
	f.Add(neigh)
	fdb := appendNdmsg(nil, unix.AF_BRIDGE, 5, 0x80, unix.NTF_SELF, netip.MustParseAddr("198.18.0.12"), &hwAddr{0x0e, 1, 2, 3, 4, 5})
	f.Add(fdb)
	rt := []byte{unix.AF_INET, 24, 0, 0, unix.RT_TABLE_MAIN, 87, 0, unix.RTN_UNICAST, 4, 0, 0, 0}
	rt = attr(rt, unix.RTA_DST, []byte{10, 244, 2, 0})
	rt = attr(rt, unix.RTA_GATEWAY, []byte{10, 244, 2, 0})
	rt = attr(rt, unix.RTA_OIF, u32(5))
	f.Add(rt)
	f.Add([]byte{unix.AF_INET, 33, 0, 0, 254, 0, 0, 0, 0, 0, 0, 0, 8, 0, 1, 0, 10, 0, 0, 0})
	f.Fuzz(func(t *testing.T, d []byte) {
		for _, fam := range []uint8{unix.AF_INET, unix.AF_BRIDGE} {
			if e, ok := parseNeighMsg(d, fam); ok && e.hasMAC && (e.mac.isZero() || e.mac[0]&1 != 0) {
				t.Fatalf("accepted a bad MAC %s", e.mac)
			}
		}
		if p, _, ok := parseRouteMsg(d); ok && (!p.IsValid() || !p.Addr().Is4()) {
			t.Fatalf("accepted a bad destination %v", p)
		}
	})
}
