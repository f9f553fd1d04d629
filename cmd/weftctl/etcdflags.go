package main

import (
	"context"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/weft-net/weft/internal/store"
)

// etcdFlags are the persistent flags that say how weftctl reaches etcd. Each
// can also be set as WEFTCTL_<FLAG>.
type etcdFlags struct {
	endpoints          string
	prefix             string
	caFile, certFile   string
	keyFile            string
	username, password string
}

func addEtcdFlags(root *cobra.Command) *etcdFlags {
	g := &etcdFlags{}
	f := root.PersistentFlags()
	f.StringVar(&g.endpoints, "etcd-endpoints", envOr("WEFTCTL_ETCD_ENDPOINTS", "http://127.0.0.1:2379"), "comma-separated etcd client URLs (http(s)://host:port or unix:///path)")
	f.StringVar(&g.prefix, "etcd-prefix", envOr("WEFTCTL_ETCD_PREFIX", store.DefaultPrefix), "etcd key prefix of the network")
	f.StringVar(&g.caFile, "etcd-cafile", envOr("WEFTCTL_ETCD_CAFILE", ""), "CA bundle to verify etcd's certificate")
	f.StringVar(&g.certFile, "etcd-certfile", envOr("WEFTCTL_ETCD_CERTFILE", ""), "client certificate for etcd")
	f.StringVar(&g.keyFile, "etcd-keyfile", envOr("WEFTCTL_ETCD_KEYFILE", ""), "client key for etcd")
	f.StringVar(&g.username, "etcd-username", envOr("WEFTCTL_ETCD_USERNAME", ""), "etcd user name")
	f.StringVar(&g.password, "etcd-password", envOr("WEFTCTL_ETCD_PASSWORD", ""), "etcd password")
	return g
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// open connects to etcd with the flags' settings.
func (g *etcdFlags) open(ctx context.Context) (*store.Store, error) {
	return store.New(ctx, store.Options{
		Endpoints: strings.Split(g.endpoints, ","),
		Prefix:    g.prefix,
		CAFile:    g.caFile, CertFile: g.certFile, KeyFile: g.keyFile,
		Username: g.username, Password: g.password,
	})
}
