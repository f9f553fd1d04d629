package main

import "github.com/spf13/cobra"

// newDockerOptsCmd is a placeholder until its owner lands the command.
func newDockerOptsCmd() *cobra.Command {
	return &cobra.Command{Use: "dockeropts", Short: "not implemented yet", Hidden: true}
}
