package main

import "github.com/spf13/cobra"

// newPeersCmd is a placeholder until its owner lands the command.
func newPeersCmd(g *etcdFlags) *cobra.Command {
	return &cobra.Command{Use: "peers", Short: "not implemented yet", Hidden: true}
}
