package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/weft-net/weft/internal/etcdserver"
)

func newEtcdCmd() *cobra.Command {
	var c etcdserver.Config
	var urls string
	cmd := &cobra.Command{
		Use:   "etcd",
		Short: "Run an embedded single-member etcd in the foreground (Weft's store for one machine)",
		Long: `Run a real etcd (the etcd server's embed package) in this process until
SIGINT or SIGTERM. Hosts reach it on the client URLs; list a unix socket
too so that local tools need no network. For more than a handful of hosts,
run an etcd cluster and point weftd at it with --etcd-endpoints.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.ClientURLs = strings.Split(urls, ",")
			srv, err := etcdserver.Start(cmd.Context(), c)
			if err != nil {
				return err
			}
			defer srv.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "etcd serving on %s\n", urls)
			select {
			case <-cmd.Context().Done():
				return nil
			case err := <-srv.Err():
				return fmt.Errorf("etcd: %w", err)
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.DataDir, "data-dir", "/var/lib/weft/etcd", "etcd data directory")
	f.StringVar(&c.Name, "name", "weft", "member name")
	f.StringVar(&urls, "listen-client-urls", "http://127.0.0.1:2379", "comma-separated client URLs (http://host:port, unix:///path)")
	f.StringVar(&c.PeerURL, "listen-peer-url", "", "peer URL (default: a free port on 127.0.0.1)")
	f.StringVar(&c.LogLevel, "log-level", "error", "etcd's log level")
	f.StringVar(&c.CertFile, "cert-file", "", "server certificate for https:// client URLs")
	f.StringVar(&c.KeyFile, "key-file", "", "server key for https:// client URLs")
	f.StringVar(&c.CAFile, "trusted-ca-file", "", "CA that client certificates must be signed by (enables client certificate auth)")
	return cmd
}
