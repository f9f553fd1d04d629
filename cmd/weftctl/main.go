// Command weftctl is the Weft operator's tool: the network config, leases,
// an embedded etcd, Docker options, and `lab`, a whole multi-host cluster on
// one machine.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "weftctl:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "weftctl",
		Short:         "Operate a Weft container network",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g := addEtcdFlags(root)
	root.AddCommand(
		newConfigCmd(g),
		newLeasesCmd(g),
		newEtcdCmd(),
		newLabCmd(),
		newDockerOptsCmd(),
		newPeersCmd(g),
		newStatusCmd(g),
	)
	return root
}
