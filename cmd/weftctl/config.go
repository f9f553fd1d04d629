package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/weft-net/weft/internal/backends"
	"github.com/weft-net/weft/internal/config"
)

func newConfigCmd(g *etcdFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Read or write the network configuration in etcd"}
	cmd.AddCommand(&cobra.Command{
		Use:   "get",
		Short: "Print the stored network configuration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := g.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			raw, err := s.GetConfigRaw(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(raw))
			return nil
		},
	}, &cobra.Command{
		Use:   "set FILE|-",
		Short: "Validate a network configuration and store it (nothing is written when it is invalid)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := readInput(cmd, args[0])
			if err != nil {
				return err
			}
			s, err := g.open(cmd.Context())
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.SetConfig(cmd.Context(), raw, backends.Validate); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "network config written to %s\n", s.ConfigKey())
			return nil
		},
	}, &cobra.Command{
		Use:   "check FILE|-",
		Short: "Validate a network configuration without writing it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return checkConfigFile(cmd, args[0])
		},
	})
	return cmd
}

// checkConfigFile validates a configuration document and prints it with
// every default made explicit.
func checkConfigFile(cmd *cobra.Command, path string) error {
	raw, err := readInput(cmd, path)
	if err != nil {
		return err
	}
	n, err := config.Parse(raw)
	if err != nil {
		return err
	}
	if err := backends.Validate(n); err != nil {
		return err
	}
	out, err := n.Marshal()
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), string(out))
	return nil
}

// readInput reads a file, or standard input when path is "-".
func readInput(cmd *cobra.Command, path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(cmd.InOrStdin())
	}
	return os.ReadFile(path)
}
