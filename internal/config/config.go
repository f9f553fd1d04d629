// Package config parses and validates Weft's network configuration: the JSON
// document stored at <prefix>/config in etcd. Its keys and defaults are
// flannel's, so a flannel cluster's configuration is read unchanged.
package config

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"sort"
	"strings"
)

// DefaultBackend is the backend used when the configuration has no Backend
// section or no Backend.Type.
const DefaultBackend = "vxlan"

// Network is a validated network configuration with every default filled in.
type Network struct {
	// EnableIPv4 reports whether the IPv4 network is in use (true unless
	// explicitly disabled).
	EnableIPv4 bool
	// EnableIPv6 reports whether the IPv6 network is requested. Weft refuses
	// it until an IPv6 datapath exists.
	EnableIPv6 bool
	// Network is the whole overlay network, e.g. 10.244.0.0/16.
	Network netip.Prefix
	// SubnetLen is the prefix length of each host's subnet.
	SubnetLen int
	// SubnetMin and SubnetMax bound the subnets handed out (both inclusive,
	// both network addresses of a subnet).
	SubnetMin, SubnetMax netip.Addr
	// IPv6Network, IPv6SubnetLen, IPv6SubnetMin and IPv6SubnetMax are the
	// IPv6 counterparts, parsed and validated when present.
	IPv6Network                  netip.Prefix
	IPv6SubnetLen                int
	IPv6SubnetMin, IPv6SubnetMax netip.Addr
	// BackendType is Backend.Type, defaulted to [DefaultBackend].
	BackendType string
	// Backend is the raw Backend object, for the backend to parse its own
	// options from.
	Backend json.RawMessage
}

// rawNetwork mirrors the JSON document. Addresses stay strings so that errors
// can name the field that failed to parse.
type rawNetwork struct {
	EnableIPv4     *bool
	EnableIPv6     *bool
	EnableNFTables *bool
	Network        *string
	SubnetLen      *int
	SubnetMin      *string
	SubnetMax      *string
	IPv6Network    *string
	IPv6SubnetLen  *int
	IPv6SubnetMin  *string
	IPv6SubnetMax  *string
	Backend        json.RawMessage
}

// knownKeys are the top-level keys Weft accepts, in their canonical spelling.
var knownKeys = []string{
	"EnableIPv4", "EnableIPv6", "EnableNFTables", "Network", "SubnetLen",
	"SubnetMin", "SubnetMax", "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin",
	"IPv6SubnetMax", "Backend",
}

// FieldError reports a configuration field that breaks a rule.
type FieldError struct {
	Field string // the JSON key, e.g. "SubnetMin" or "Backend.VNI"
	Msg   string // the rule that was broken
}

func (e *FieldError) Error() string { return fmt.Sprintf("config: %s: %s", e.Field, e.Msg) }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Parse decodes and validates a network configuration, filling in defaults.
// The returned error names the offending field. Backend options are not
// checked here beyond Backend.Type being a string; the backend registry
// validates them.
func Parse(data []byte) (*Network, error) {
	if err := checkKeys(data); err != nil {
		return nil, err
	}
	var raw rawNetwork
	if err := json.Unmarshal(data, &raw); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fieldErr(te.Field, "must be a JSON %s, not %s", te.Type.Kind(), te.Value)
		}
		return nil, fmt.Errorf("config: not valid JSON: %w", err)
	}
	n := &Network{EnableIPv4: true}
	if raw.EnableIPv6 != nil {
		n.EnableIPv6 = *raw.EnableIPv6
	}
	if raw.EnableIPv4 != nil {
		n.EnableIPv4 = *raw.EnableIPv4
	}
	if !n.EnableIPv4 && !n.EnableIPv6 {
		return nil, fieldErr("EnableIPv4", "at least one of EnableIPv4 and EnableIPv6 must be true")
	}
	if n.EnableIPv4 {
		if err := n.parseIPv4(&raw); err != nil {
			return nil, err
		}
	}
	if n.EnableIPv6 || raw.IPv6Network != nil {
		if err := n.parseIPv6(&raw); err != nil {
			return nil, err
		}
	}
	if n.EnableIPv6 {
		return nil, fieldErr("EnableIPv6", "IPv6 is not supported yet: Weft has no IPv6 datapath; remove EnableIPv6 or set it to false")
	}
	if err := n.parseBackend(raw.Backend); err != nil {
		return nil, err
	}
	return n, nil
}

// checkKeys refuses top-level keys Weft does not know. Keys match
// case-insensitively, as Go's JSON decoding (and so flannel) does.
func checkKeys(data []byte) error {
	var top map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&top); err != nil {
		return fmt.Errorf("config: not a JSON object: %w", err)
	}
	if top == nil {
		return fmt.Errorf("config: not a JSON object")
	}
	var unknown []string
	for k := range top {
		if !containsFold(knownKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fieldErr(unknown[0], "unknown key (known keys: %s)", strings.Join(knownKeys, ", "))
	}
	return nil
}

func containsFold(list []string, s string) bool {
	for _, k := range list {
		if strings.EqualFold(k, s) {
			return true
		}
	}
	return false
}

func (n *Network) parseIPv4(raw *rawNetwork) error {
	if raw.Network == nil || *raw.Network == "" {
		return fieldErr("Network", "is required (e.g. \"10.244.0.0/16\")")
	}
	p, err := netip.ParsePrefix(*raw.Network)
	if err != nil || !p.Addr().Is4() {
		return fieldErr("Network", "%q is not an IPv4 prefix", *raw.Network)
	}
	if p.Masked() != p {
		return fieldErr("Network", "%q has host bits set; did you mean %s?", *raw.Network, p.Masked())
	}
	n.Network = p
	min, max, slen, err := subnetRange("", p, raw.SubnetLen, raw.SubnetMin, raw.SubnetMax, 30)
	if err != nil {
		return err
	}
	n.SubnetMin, n.SubnetMax, n.SubnetLen = min, max, slen
	return nil
}

func (n *Network) parseIPv6(raw *rawNetwork) error {
	if raw.IPv6Network == nil || *raw.IPv6Network == "" {
		return fieldErr("IPv6Network", "is required when EnableIPv6 is true")
	}
	p, err := netip.ParsePrefix(*raw.IPv6Network)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
		return fieldErr("IPv6Network", "%q is not an IPv6 prefix", *raw.IPv6Network)
	}
	if p.Masked() != p {
		return fieldErr("IPv6Network", "%q has host bits set; did you mean %s?", *raw.IPv6Network, p.Masked())
	}
	n.IPv6Network = p
	min, max, slen, err := subnetRange("IPv6", p, raw.IPv6SubnetLen, raw.IPv6SubnetMin, raw.IPv6SubnetMax, 126)
	if err != nil {
		return err
	}
	n.IPv6SubnetMin, n.IPv6SubnetMax, n.IPv6SubnetLen = min, max, slen
	return nil
}

// subnetRange applies flannel's defaults and rules for SubnetLen, SubnetMin
// and SubnetMax. prefix is "" or "IPv6", naming the fields in errors.
func subnetRange(prefix string, network netip.Prefix, lenp *int, minp, maxp *string, maxLen int) (min, max netip.Addr, slen int, err error) {
	nbits := network.Bits()
	if nbits > maxLen-2 {
		return min, max, 0, fieldErr(prefix+"Network", "%s is too small: it must hold at least four subnets of at most /%d, so its prefix can be at most /%d", network, maxLen, maxLen-2)
	}
	switch {
	case lenp != nil:
		slen = *lenp
	case network.Addr().Is4() && nbits <= 22:
		slen = 24
	case network.Addr().Is6() && nbits <= 62:
		slen = 64
	default:
		slen = nbits + 2
	}
	if slen < nbits+2 || slen > maxLen {
		return min, max, 0, fieldErr(prefix+"SubnetLen", "%d is out of range: with Network %s it must be between %d and %d", slen, network, nbits+2, maxLen)
	}
	if slen-nbits > 62 {
		return min, max, 0, fieldErr(prefix+"SubnetLen", "%d splits %s into more than 2^62 subnets", slen, network)
	}
	count := uint64(1) << (slen - nbits)
	min, _ = NthSubnet(network, slen, 1) // flannel skips the network's first subnet by default
	max, _ = NthSubnet(network, slen, count-1)
	if minp != nil {
		if min, err = subnetBound(prefix+"SubnetMin", *minp, network, slen); err != nil {
			return
		}
	}
	if maxp != nil {
		if max, err = subnetBound(prefix+"SubnetMax", *maxp, network, slen); err != nil {
			return
		}
	}
	if max.Less(min) {
		return min, max, 0, fieldErr(prefix+"SubnetMax", "%s is below %sSubnetMin %s", max, prefix, min)
	}
	return min, max, slen, nil
}

func subnetBound(field, s string, network netip.Prefix, slen int) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is4() != network.Addr().Is4() || a.Is4In6() {
		return a, fieldErr(field, "%q is not an address of the same family as %s", s, network)
	}
	if !network.Contains(a) {
		return a, fieldErr(field, "%s is outside the network %s", a, network)
	}
	if p := netip.PrefixFrom(a, slen); p.Masked().Addr() != a {
		return a, fieldErr(field, "%s is not on a /%d boundary (SubnetLen); the nearest subnet is %s", a, slen, p.Masked().Addr())
	}
	return a, nil
}

func (n *Network) parseBackend(raw json.RawMessage) error {
	n.BackendType = DefaultBackend
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		n.Backend = json.RawMessage(`{"Type":"` + DefaultBackend + `"}`)
		return nil
	}
	var b map[string]json.RawMessage
	if err := json.Unmarshal(raw, &b); err != nil {
		return fieldErr("Backend", "must be a JSON object such as {\"Type\":\"vxlan\"}")
	}
	for k, v := range b {
		if strings.EqualFold(k, "Type") {
			var t string
			if err := json.Unmarshal(v, &t); err != nil {
				return fieldErr("Backend.Type", "must be a string")
			}
			if t != "" {
				n.BackendType = t
			}
		}
	}
	n.Backend = append(json.RawMessage(nil), raw...)
	return nil
}

// SubnetCount returns how many subnets lie between SubnetMin and SubnetMax.
func (n *Network) SubnetCount() uint64 {
	return subnetIndex(n.Network, n.SubnetLen, n.SubnetMax) - subnetIndex(n.Network, n.SubnetLen, n.SubnetMin) + 1
}

// Subnets calls fn for each assignable subnet in order, from SubnetMin to
// SubnetMax, until fn returns false.
func (n *Network) Subnets(fn func(netip.Prefix) bool) {
	lo := subnetIndex(n.Network, n.SubnetLen, n.SubnetMin)
	hi := subnetIndex(n.Network, n.SubnetLen, n.SubnetMax)
	for i := lo; i <= hi; i++ {
		a, _ := NthSubnet(n.Network, n.SubnetLen, i)
		if !fn(netip.PrefixFrom(a, n.SubnetLen)) {
			return
		}
	}
}

// SubnetAt returns the i-th assignable subnet (0 is SubnetMin).
func (n *Network) SubnetAt(i uint64) netip.Prefix {
	lo := subnetIndex(n.Network, n.SubnetLen, n.SubnetMin)
	a, _ := NthSubnet(n.Network, n.SubnetLen, lo+i)
	return netip.PrefixFrom(a, n.SubnetLen)
}

// Assignable reports whether p is a subnet this network may hand to a host:
// inside Network, of SubnetLen, between SubnetMin and SubnetMax.
func (n *Network) Assignable(p netip.Prefix) bool {
	return p.Bits() == n.SubnetLen && p.Masked() == p && n.Network.Contains(p.Addr()) &&
		!p.Addr().Less(n.SubnetMin) && !n.SubnetMax.Less(p.Addr())
}

// NthSubnet returns the network address of the i-th subnet of length slen in
// network. ok is false when i is out of range.
func NthSubnet(network netip.Prefix, slen int, i uint64) (addr netip.Addr, ok bool) {
	hi, lo := toU128(network.Addr())
	shift := uint(network.Addr().BitLen() - slen)
	var addHi, addLo uint64
	switch {
	case shift >= 64:
		addHi = i << (shift - 64)
	case shift == 0:
		addLo = i
	default:
		addLo, addHi = i<<shift, i>>(64-shift)
	}
	lo, carry := bits.Add64(lo, addLo, 0)
	hi, _ = bits.Add64(hi, addHi, carry)
	a := fromU128(hi, lo, network.Addr().Is4())
	return a, network.Contains(a)
}

// subnetIndex is the inverse of NthSubnet for addresses inside network.
func subnetIndex(network netip.Prefix, slen int, a netip.Addr) uint64 {
	xh, xl := toU128(network.Addr())
	yh, yl := toU128(a)
	dl, borrow := bits.Sub64(yl, xl, 0)
	dh, _ := bits.Sub64(yh, xh, borrow)
	shift := uint(network.Addr().BitLen() - slen)
	switch {
	case shift >= 64:
		return dh >> (shift - 64)
	case shift == 0:
		return dl
	default:
		return dl>>shift | dh<<(64-shift)
	}
}

func toU128(a netip.Addr) (hi, lo uint64) {
	if a.Is4() {
		b := a.As4()
		return 0, uint64(binary.BigEndian.Uint32(b[:]))
	}
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

func fromU128(hi, lo uint64, v4 bool) netip.Addr {
	if v4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(lo))
		if hi != 0 || lo>>32 != 0 {
			return netip.Addr{}
		}
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	return netip.AddrFrom16(b)
}

// Marshal renders the network configuration as indented JSON in flannel's
// key spelling (defaults made explicit).
func (n *Network) Marshal() ([]byte, error) {
	out := map[string]any{}
	if n.EnableIPv4 {
		out["Network"] = n.Network.String()
		out["SubnetLen"] = n.SubnetLen
		out["SubnetMin"] = n.SubnetMin.String()
		out["SubnetMax"] = n.SubnetMax.String()
	}
	if n.EnableIPv6 {
		out["EnableIPv6"] = true
		out["IPv6Network"] = n.IPv6Network.String()
		out["IPv6SubnetLen"] = n.IPv6SubnetLen
		out["IPv6SubnetMin"] = n.IPv6SubnetMin.String()
		out["IPv6SubnetMax"] = n.IPv6SubnetMax.String()
	}
	out["Backend"] = n.Backend
	return json.MarshalIndent(out, "", "  ")
}
