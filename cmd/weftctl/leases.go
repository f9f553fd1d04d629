package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/weft-net/weft/internal/lease"
)

func newLeasesCmd(g *etcdFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "leases", Short: "List, reserve or delete subnet leases"}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the leases in etcd",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := g.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			ls, err := s.Leases(cmd.Context())
			if err != nil {
				return err
			}
			sort.Slice(ls, func(i, j int) bool { return ls[i].Subnet.Addr().Less(ls[j].Subnet.Addr()) })
			if asJSON {
				type row struct {
					Subnet   string          `json:"subnet"`
					Reserved bool            `json:"reserved"`
					Attrs    json.RawMessage `json:"attrs"`
				}
				rows := make([]row, 0, len(ls))
				for _, l := range ls {
					v, _ := l.Attrs.Encode()
					rows = append(rows, row{Subnet: l.Subnet.String(), Reserved: l.Reserved(), Attrs: v})
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SUBNET\tPUBLIC IP\tBACKEND\tKIND")
			for _, l := range ls {
				kind := fmt.Sprintf("lease %x", l.EtcdLease)
				if l.Reserved() {
					kind = "reservation"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", l.Subnet, l.Attrs.PublicIP, or(l.Attrs.BackendType, "udp"), kind)
			}
			return w.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var publicIP string
	reserve := &cobra.Command{
		Use:   "reserve SUBNET --public-ip IP",
		Short: "Reserve a subnet for a host: the key never expires and no other host gets it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := netip.ParsePrefix(args[0])
			if err != nil {
				return fmt.Errorf("subnet %q: %w", args[0], err)
			}
			ip, err := netip.ParseAddr(publicIP)
			if err != nil || !ip.Is4() {
				return fmt.Errorf("--public-ip %q is not an IPv4 address", publicIP)
			}
			s, err := g.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			n, err := s.GetConfig(cmd.Context())
			if err != nil {
				return err
			}
			if !n.Assignable(p) {
				return fmt.Errorf("subnet %s is not a /%d between SubnetMin %s and SubnetMax %s of %s", p, n.SubnetLen, n.SubnetMin, n.SubnetMax, n.Network)
			}
			return s.PutLeases(cmd.Context(), []lease.Lease{{Subnet: p, Attrs: lease.Attrs{PublicIP: ip}}}, 0)
		},
	}
	reserve.Flags().StringVar(&publicIP, "public-ip", "", "the host's PublicIP")

	del := &cobra.Command{
		Use:   "delete SUBNET",
		Short: "Delete a subnet's lease or reservation",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := netip.ParsePrefix(args[0])
			if err != nil {
				return fmt.Errorf("subnet %q: %w", args[0], err)
			}
			s, err := g.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			return s.DeleteLease(cmd.Context(), p)
		},
	}
	cmd.AddCommand(list, reserve, del)
	return cmd
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
