// Package lease defines a host's subnet lease as flannel stores it in etcd:
// the key <prefix>/subnets/10.244.7.0-24 and the JSON value holding the
// host's public address and backend data. Everything here treats its input
// as untrusted: leases are written by other hosts (and by flannel), so
// decoding must fail with an error, never panic.
package lease

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Attrs is the JSON value of a lease key, field for field flannel's
// LeaseAttrs, so that flannel and Weft read each other's leases.
type Attrs struct {
	// PublicIP is the host's underlay address that peers send traffic to.
	PublicIP netip.Addr `json:"PublicIP"`
	// PublicIPv6 is the host's IPv6 underlay address, or nil (JSON null).
	PublicIPv6 *netip.Addr `json:"PublicIPv6"`
	// BackendType names the backend ("vxlan", "host-gw"); flannel's udp
	// backend leaves it empty.
	BackendType string `json:"BackendType,omitempty"`
	// BackendData is backend-specific, e.g. {"VNI":1,"VtepMAC":"…"}.
	BackendData json.RawMessage `json:"BackendData,omitempty"`
	// BackendV6Data is the IPv6 counterpart of BackendData.
	BackendV6Data json.RawMessage `json:"BackendV6Data,omitempty"`
}

// Lease is one host's claim on a subnet.
type Lease struct {
	// Subnet is the host's subnet, e.g. 10.244.7.0/24.
	Subnet netip.Prefix
	// Attrs is the decoded value.
	Attrs Attrs
	// EtcdLease is the etcd lease the key is attached to; 0 means the key is
	// a reservation that never expires.
	EtcdLease int64
	// Expiration is when the etcd lease runs out if it is not renewed (zero
	// when unknown or for reservations).
	Expiration time.Time
	// ModRevision is the etcd revision that last wrote the key.
	ModRevision int64
}

// Reserved reports whether the lease is a reservation: a key written
// without an etcd lease, which never expires and belongs to its PublicIP.
func (l *Lease) Reserved() bool { return l.EtcdLease == 0 }

// SubnetKey returns the key suffix flannel uses for a subnet: "10.244.7.0-24".
func SubnetKey(p netip.Prefix) string {
	return p.Addr().String() + "-" + strconv.Itoa(p.Bits())
}

// ParseSubnetKey parses a key suffix written by SubnetKey. The full key
// (with the "<prefix>/subnets/" part) is accepted as well.
func ParseSubnetKey(key string) (netip.Prefix, error) {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		key = key[i+1:]
	}
	addr, bitsStr, ok := strings.Cut(key, "-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("lease key %q: want <address>-<prefix length>", key)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("lease key %q: %w", key, err)
	}
	bits, err := strconv.Atoi(bitsStr)
	if err != nil || bits < 0 || bits > a.BitLen() || strconv.Itoa(bits) != bitsStr {
		return netip.Prefix{}, fmt.Errorf("lease key %q: bad prefix length %q", key, bitsStr)
	}
	p := netip.PrefixFrom(a, bits)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("lease key %q: host bits set in subnet", key)
	}
	return p, nil
}

// DecodeAttrs parses and checks a lease value.
func DecodeAttrs(data []byte) (Attrs, error) {
	var a Attrs
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&a); err != nil {
		return Attrs{}, fmt.Errorf("lease value: %w", err)
	}
	if !a.PublicIP.IsValid() || !a.PublicIP.Is4() {
		return Attrs{}, fmt.Errorf("lease value: PublicIP %q is not an IPv4 address", a.PublicIP)
	}
	if a.PublicIPv6 != nil && !a.PublicIPv6.Is6() {
		return Attrs{}, fmt.Errorf("lease value: PublicIPv6 %q is not an IPv6 address", a.PublicIPv6)
	}
	return a, nil
}

// Encode renders the attributes as flannel writes them.
func (a Attrs) Encode() ([]byte, error) {
	return json.Marshal(a)
}

// Decode builds a lease from an etcd key and value.
func Decode(key string, value []byte) (Lease, error) {
	p, err := ParseSubnetKey(key)
	if err != nil {
		return Lease{}, err
	}
	a, err := DecodeAttrs(value)
	if err != nil {
		return Lease{}, fmt.Errorf("lease %s: %w", SubnetKey(p), err)
	}
	return Lease{Subnet: p, Attrs: a}, nil
}
