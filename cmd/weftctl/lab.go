package main

import "github.com/spf13/cobra"

// newLabCmd is a placeholder until its owner lands the command.
func newLabCmd() *cobra.Command {
	return &cobra.Command{Use: "lab", Short: "not implemented yet", Hidden: true}
}
