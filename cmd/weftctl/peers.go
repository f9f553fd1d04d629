package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/internal/backend/vxlan/peergen"
)

// newPeersCmd is `weftctl peers`: synthetic peers for control-plane tests.
func newPeersCmd(g *etcdFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "peers",
		Short: "Write or remove synthetic peer leases (public addresses from 198.19.0.0/16)",
	}
	var (
		count   int
		backend string
		vni     int
		batch   int
		ttl     time.Duration
	)
	gen := &cobra.Command{
		Use:   "generate --count N [--backend vxlan]",
		Short: "Write N synthetic peer leases into etcd",
		Long: "Write N synthetic peer leases into etcd, in free subnets from the top of the\n" +
			"network's range, with public addresses 198.19.0.1, 198.19.0.2, ... (never\n" +
			"routed anywhere real). Used to measure how fast hosts program thousands of\n" +
			"peers; remove them with `weftctl peers clear`.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			s, err := g.open(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			n, err := s.GetConfig(ctx)
			if err != nil {
				return err
			}
			bt := backend
			if !cmd.Flags().Changed("backend") {
				bt = n.BackendType
			}
			switch bt {
			case "vxlan", "host-gw":
			case "udp", "":
				bt = "" // flannel's udp leases carry no BackendType
			default:
				return fmt.Errorf("--backend %q: want vxlan, host-gw or udp", bt)
			}
			cur, err := s.Leases(ctx)
			if err != nil {
				return err
			}
			taken := make(map[netip.Prefix]bool, len(cur))
			for _, l := range cur {
				taken[l.Subnet] = true
			}
			ls, err := peergen.Leases(n, peergen.Options{Count: count, BackendType: bt, VNI: vni, Taken: taken})
			if err != nil {
				return fmt.Errorf("--count %d: %w", count, err)
			}
			if batch <= 0 {
				batch = len(ls)
			}
			start := time.Now()
			for i := 0; i < len(ls); i += batch {
				j := min(i+batch, len(ls))
				if err := s.PutLeases(ctx, ls[i:j], ttl); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %d synthetic %q leases in %v (last write done at %s)\n",
				len(ls), or(bt, "udp"), time.Since(start).Round(time.Millisecond), time.Now().UTC().Format(time.RFC3339Nano))
			return nil
		},
	}
	gen.Flags().IntVar(&count, "count", 0, "number of peers")
	gen.Flags().StringVar(&backend, "backend", "", "BackendType of the leases: vxlan, host-gw or udp (default: the network's Backend.Type)")
	gen.Flags().IntVar(&vni, "vni", 1, "VNI in vxlan BackendData")
	gen.Flags().IntVar(&batch, "batch", 0, "leases per etcd transaction (0: all in one)")
	gen.Flags().DurationVar(&ttl, "ttl", 0, "etcd lease TTL (0: reservations that never expire)")
	_ = gen.MarkFlagRequired("count")

	clear := &cobra.Command{
		Use:   "clear",
		Short: "Delete every synthetic peer lease (public address in 198.19.0.0/16)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			s, err := g.open(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			cur, err := s.Leases(ctx)
			if err != nil {
				return err
			}
			var errs []error
			n := 0
			for _, l := range cur {
				if !peergen.IsSynthetic(l) {
					continue
				}
				if err := s.DeleteLease(ctx, l.Subnet); err != nil {
					errs = append(errs, err)
					continue
				}
				n++
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %d synthetic leases\n", n)
			return errors.Join(errs...)
		},
	}
	cmd.AddCommand(gen, clear)
	return cmd
}
