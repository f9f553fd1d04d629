// Package masq masquerades pod egress with nftables, in Weft's own table
// (ip weft): traffic from pods to addresses outside the overlay network
// leaves with the host's address; pod-to-pod traffic keeps the pod's
// address, multicast and traffic that does not come from a pod are left
// alone. It speaks nftables over netlink (no nft or iptables binary) and acts
// on the network namespace of the calling thread.
//
// The table is level-triggered state: [Ensure] compares what the kernel
// holds with what it should hold and, when they differ (missing, edited,
// another network), replaces the whole table in one atomic batch, so packets
// never see a half-written rule set and concurrent callers (weftd, plugin
// processes) converge on the same content.
package masq

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// Table is the name of Weft's nftables table (family ip).
const Table = "weft"

// Chain is the NAT chain in [Table], hooked at postrouting (srcnat priority).
const Chain = "postrouting"

var multicast = netip.MustParsePrefix("224.0.0.0/4")

// Ensure makes the current namespace's ip weft table hold exactly the
// masquerade rules for network. It changes nothing when the rules are in
// place. hostSubnet is the host's own pod subnet; it must lie inside
// network.
func Ensure(network, hostSubnet netip.Prefix) error {
	if !network.IsValid() || !network.Addr().Is4() || network.Masked() != network {
		return fmt.Errorf("masq: network %s is not an IPv4 network prefix", network)
	}
	if !hostSubnet.IsValid() || !network.Contains(hostSubnet.Addr()) || hostSubnet.Bits() < network.Bits() {
		return fmt.Errorf("masq: host subnet %s is not inside network %s", hostSubnet, network)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("masq: nftables: %w", err)
	}
	want := desired(network)
	if inPlace(c, want) {
		return nil
	}
	t := &nftables.Table{Name: Table, Family: nftables.TableFamilyIPv4}
	// One batch: make sure the table exists, delete it (with anything
	// stale inside), write it anew. Either all of it applies or none.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	ch := c.AddChain(newChain(t))
	for _, r := range want {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.exprs, UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masq: write table ip %s: %w", Table, err)
	}
	return nil
}

// Check reports (as an error) whether the current namespace's table
// differs from what [Ensure] would write for network. It changes nothing.
func Check(network netip.Prefix) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("masq: nftables: %w", err)
	}
	if !inPlace(c, desired(network)) {
		return fmt.Errorf("masq: table ip %s does not hold the masquerade rules for %s", Table, network)
	}
	return nil
}

// Cleanup deletes Weft's table from the current namespace. Deleting a table
// that is not there is not an error.
func Cleanup() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("masq: nftables: %w", err)
	}
	t := &nftables.Table{Name: Table, Family: nftables.TableFamilyIPv4}
	c.AddTable(t) // so that the delete below cannot fail with ENOENT
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masq: delete table ip %s: %w", Table, err)
	}
	return nil
}

func newChain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name:     Chain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &accept,
	}
}

// inPlace reports whether the kernel's chain matches want: same hook, and
// the same rules in the same order (rules are recognised by their comment,
// which spells out the match, and by their expressions' count).
func inPlace(c *nftables.Conn, want []rule) bool {
	ch, n, err := ourChain(c)
	if err != nil || ch == nil || n != 1 || ch.Type != nftables.ChainTypeNAT ||
		ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookPostrouting ||
		ch.Priority == nil || *ch.Priority != *nftables.ChainPriorityNATSource {
		return false
	}
	have, err := c.GetRules(ch.Table, ch)
	if err != nil || len(have) != len(want) {
		return false
	}
	for i, r := range have {
		comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		if comment != want[i].comment || len(r.Exprs) != len(want[i].exprs) {
			return false
		}
	}
	return true
}

// ourChain finds Weft's chain (nil when absent) and counts the chains in
// Weft's table.
func ourChain(c *nftables.Conn) (*nftables.Chain, int, error) {
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, 0, fmt.Errorf("masq: list chains: %w", err)
	}
	var ours *nftables.Chain
	n := 0
	for _, x := range chains {
		if x.Table == nil || x.Table.Name != Table {
			continue
		}
		n++
		if x.Name == Chain {
			ours = x
		}
	}
	return ours, n, nil
}

// rule is one rule of the chain with the comment that identifies it.
type rule struct {
	comment string
	exprs   []expr.Any
}

// desired returns the chain's rules, in order:
//
//	ip saddr N ip daddr N return              pod to pod: keep the pod's address
//	ip daddr 224.0.0.0/4 return               multicast: leave alone
//	ip saddr != N return                      not from a pod: leave alone
//	ip saddr N ip daddr != N masquerade fully-random
func desired(n netip.Prefix) []rule {
	ret := &expr.Verdict{Kind: expr.VerdictReturn}
	return []rule{
		{fmt.Sprintf("weft: pod to pod within %s keeps its source", n),
			cat(match(srcOff, n, true), match(dstOff, n, true), []expr.Any{ret})},
		{"weft: multicast is not masqueraded",
			cat(match(dstOff, multicast, true), []expr.Any{ret})},
		{fmt.Sprintf("weft: traffic not from %s is left alone", n),
			cat(match(srcOff, n, false), []expr.Any{ret})},
		{fmt.Sprintf("weft: pods of %s leave with the host's address", n),
			cat(match(srcOff, n, true), match(dstOff, n, false), []expr.Any{&expr.Masq{FullyRandom: true}})},
	}
}

// Offsets of the IPv4 source and destination addresses in the header.
const (
	srcOff = 12
	dstOff = 16
)

// match loads the address at off, masks it to p's length and compares it
// with p's network address (equal when in is true).
func match(off uint32, p netip.Prefix, in bool) []expr.Any {
	op := expr.CmpOpEq
	if !in {
		op = expr.CmpOpNeq
	}
	mask := prefixMask(p.Bits())
	addr := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: op, Register: 1, Data: addr[:]},
	}
}

func prefixMask(bits int) []byte {
	m := make([]byte, 4)
	for i := range m {
		switch {
		case bits >= 8:
			m[i] = 0xff
			bits -= 8
		case bits > 0:
			m[i] = byte(0xff << (8 - bits))
			bits = 0
		}
	}
	return m
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// Rules returns the comments of the rules in the current namespace's chain,
// in order, or nil when the table does not exist. It is meant for status
// output and tests.
func Rules() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("masq: nftables: %w", err)
	}
	ch, _, err := ourChain(c)
	if err != nil || ch == nil {
		return nil, err
	}
	rules, err := c.GetRules(ch.Table, ch)
	if err != nil {
		return nil, fmt.Errorf("masq: list rules: %w", err)
	}
	out := make([]string, 0, len(rules))
	for _, r := range rules {
		s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		out = append(out, s)
	}
	return out, nil
}
