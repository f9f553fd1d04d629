// Package etcdserver runs a real, single-member etcd inside the calling
// process (the etcd server's embed package). It is Weft's store for one
// machine: the lab runs it, tests run it, and `weftctl etcd` runs it for
// small clusters whose hosts reach it over the network. Users who outgrow it
// point weftd at their own etcd cluster instead.
package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config configures an embedded etcd.
type Config struct {
	// Name is the member name (default "weft").
	Name string
	// DataDir holds etcd's data; it survives restarts.
	DataDir string
	// ClientURLs are the URLs clients connect to, e.g.
	// "http://198.18.0.1:2379" or "unix:///run/weft/etcd.sock".
	ClientURLs []string
	// PeerURL is the member's peer URL. A single member never dials it, but
	// etcd binds it; empty picks a free port on 127.0.0.1.
	PeerURL string
	// LogLevel is etcd's own log level (default "error").
	LogLevel string
	// CertFile and KeyFile serve https:// client URLs; with CAFile set,
	// clients must present a certificate signed by it.
	CertFile, KeyFile, CAFile string
}

// Server is a running embedded etcd.
type Server struct {
	etcd *embed.Etcd
	urls []string
}

// Start starts etcd and returns once it serves clients, or with an error
// when it cannot start before ctx is done.
func Start(ctx context.Context, c Config) (*Server, error) {
	if c.DataDir == "" {
		return nil, errors.New("etcdserver: DataDir is required")
	}
	if len(c.ClientURLs) == 0 {
		return nil, errors.New("etcdserver: at least one client URL is required")
	}
	cfg := embed.NewConfig()
	cfg.Name = or(c.Name, "weft")
	cfg.Dir = c.DataDir
	cfg.LogLevel = or(c.LogLevel, "error")
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	if cfg.LogLevel != "error" && cfg.LogLevel != "fatal" {
		cfg.ZapLoggerBuilder = nil // etcd's own logger at the requested level
	}
	// Large transactions: a whole cluster's leases may be written at once.
	cfg.MaxTxnOps = 20000
	cfg.MaxRequestBytes = 16 << 20
	// Keep history bounded so long-running labs do not grow without limit.
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "100000"

	var clientURLs []url.URL
	for _, s := range c.ClientURLs {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "unix" && u.Scheme != "https" && u.Scheme != "unixs") {
			return nil, fmt.Errorf("etcdserver: client URL %q: want http://host:port or unix:///path", s)
		}
		if u.Scheme == "unix" {
			path := u.Host + u.Path
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("etcdserver: remove stale socket %s: %w", path, err)
			}
		}
		clientURLs = append(clientURLs, *u)
	}
	cfg.ListenClientUrls = clientURLs
	if c.CertFile != "" {
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: c.CertFile, KeyFile: c.KeyFile, TrustedCAFile: c.CAFile, ClientCertAuth: c.CAFile != ""}
		cfg.ClientAutoTLS = false
	}
	cfg.AdvertiseClientUrls = advertisable(clientURLs)

	peer := c.PeerURL
	if peer == "" {
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("etcdserver: pick a peer port: %w", err)
		}
		peer = fmt.Sprintf("http://127.0.0.1:%d", port)
	}
	pu, err := url.Parse(peer)
	if err != nil {
		return nil, fmt.Errorf("etcdserver: peer URL %q: %w", peer, err)
	}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdserver: start: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcdserver: %w", err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("etcdserver: not ready: %w", ctx.Err())
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcdserver: not ready after 60s")
	}
	return &Server{etcd: e, urls: c.ClientURLs}, nil
}

// advertisable returns the URLs etcd may advertise: all but unix sockets,
// falling back to the sockets when there is nothing else.
func advertisable(urls []url.URL) []url.URL {
	var out []url.URL
	for _, u := range urls {
		if u.Scheme != "unix" {
			out = append(out, u)
		}
	}
	if len(out) == 0 {
		return urls
	}
	return out
}

// Endpoints returns the client URLs the server listens on.
func (s *Server) Endpoints() []string { return append([]string(nil), s.urls...) }

// Err returns a channel that reports a fatal server error.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the server and waits for it to finish.
func (s *Server) Close() {
	s.etcd.Close()
	for _, u := range s.urls {
		if path, ok := strings.CutPrefix(u, "unix://"); ok {
			os.Remove(path)
		}
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
