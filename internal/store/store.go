// Package store keeps Weft's state in etcd, in flannel's layout:
//
//	<prefix>/config                  the network configuration (JSON)
//	<prefix>/subnets/10.244.7.0-24   one host's lease (JSON), attached to an etcd lease
//
// It connects through etcd's official client (TLS and user/password for
// the users' own clusters, unix sockets for the lab), acquires and renews
// this host's subnet (acquire.go) and watches the other hosts' leases
// (watch.go). Values written by other hosts are untrusted: a lease that does
// not parse is skipped with a warning naming its key.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// DefaultPrefix is flannel's etcd prefix.
const DefaultPrefix = "/coreos.com/network"

// ErrNoConfig is returned when the network configuration key is absent.
var ErrNoConfig = errors.New("network config not found")

// Options says how to reach etcd.
type Options struct {
	// Endpoints are etcd client URLs: http(s)://host:port or unix:///path.
	Endpoints []string
	// Prefix is the key prefix (default [DefaultPrefix]).
	Prefix string
	// CAFile, CertFile and KeyFile configure TLS to etcd.
	CAFile, CertFile, KeyFile string
	// Username and Password authenticate to etcd.
	Username, Password string
	// DialTimeout bounds connection set-up (default 5s).
	DialTimeout time.Duration
	// Log receives warnings about bad leases (default slog.Default()).
	Log *slog.Logger
}

// Store is a connection to Weft's keys in etcd.
type Store struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger
}

// New connects to etcd. It does not wait for etcd to answer: requests fail
// or are retried by the caller while etcd is away.
func New(ctx context.Context, o Options) (*Store, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("store: no etcd endpoints")
	}
	cfg := clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          o.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Username:             o.Username,
		Password:             o.Password,
		Context:              ctx,
		Logger:               zap.NewNop(),
		// Reconnect quickly once etcd is back: gRPC's default backoff grows
		// to two minutes, which would delay leases written after an outage.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if o.CAFile != "" || o.CertFile != "" || o.KeyFile != "" {
		if (o.CertFile == "") != (o.KeyFile == "") {
			return nil, errors.New("store: --etcd-certfile and --etcd-keyfile must be given together")
		}
		info := transport.TLSInfo{TrustedCAFile: o.CAFile, CertFile: o.CertFile, KeyFile: o.KeyFile}
		tlsCfg, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("store: etcd TLS: %w", err)
		}
		cfg.TLS = tlsCfg
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("store: connect to etcd %v: %w", o.Endpoints, err)
	}
	s := &Store{cli: cli, prefix: o.Prefix, log: o.Log}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s, nil
}

// Close closes the connection. Leases stay in etcd (weftd's lease outlives
// a restart); nothing is revoked.
func (s *Store) Close() error { return s.cli.Close() }

// Client returns the underlying etcd client.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Prefix returns the key prefix.
func (s *Store) Prefix() string { return s.prefix }

// ConfigKey returns the key of the network configuration.
func (s *Store) ConfigKey() string { return s.prefix + "/config" }

// SubnetsPrefix returns the prefix under which leases live (with a
// trailing slash).
func (s *Store) SubnetsPrefix() string { return s.prefix + "/subnets/" }

// LeaseKey returns the key of a subnet's lease.
func (s *Store) LeaseKey(subnet netip.Prefix) string {
	return s.SubnetsPrefix() + lease.SubnetKey(subnet)
}

// GetConfigRaw returns the stored configuration document.
func (s *Store) GetConfigRaw(ctx context.Context) ([]byte, error) {
	resp, err := s.cli.Get(ctx, s.ConfigKey())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.ConfigKey(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%w at %s: write one with `weftctl config set`", ErrNoConfig, s.ConfigKey())
	}
	return resp.Kvs[0].Value, nil
}

// GetConfig reads and validates the network configuration.
func (s *Store) GetConfig(ctx context.Context) (*config.Network, error) {
	raw, err := s.GetConfigRaw(ctx)
	if err != nil {
		return nil, err
	}
	n, err := config.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.ConfigKey(), err)
	}
	return n, nil
}

// SetConfig validates raw (config.Parse, then each extra check, such as the
// backend's own options) and writes it only when it is valid.
func (s *Store) SetConfig(ctx context.Context, raw []byte, checks ...func(*config.Network) error) error {
	n, err := config.Parse(raw)
	if err != nil {
		return err
	}
	for _, check := range checks {
		if err := check(n); err != nil {
			return err
		}
	}
	if _, err := s.cli.Put(ctx, s.ConfigKey(), string(raw)); err != nil {
		return fmt.Errorf("write %s: %w", s.ConfigKey(), err)
	}
	return nil
}

// Leases returns every lease that parses; the others are logged and skipped.
func (s *Store) Leases(ctx context.Context) ([]lease.Lease, error) {
	resp, err := s.cli.Get(ctx, s.SubnetsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	out := make([]lease.Lease, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		l, err := lease.Decode(string(kv.Key), kv.Value)
		if err != nil {
			s.log.Warn("skipping a lease that does not parse", "key", string(kv.Key), "err", err)
			continue
		}
		l.EtcdLease, l.ModRevision = kv.Lease, kv.ModRevision
		out = append(out, l)
	}
	return out, nil
}

// PutLeases writes leases in one transaction, each attached to one new etcd
// lease of ttl, or as reservations (no etcd lease) when ttl is 0. Tools and
// benchmarks use it to add synthetic peers and reservations.
func (s *Store) PutLeases(ctx context.Context, leases []lease.Lease, ttl time.Duration) error {
	var opts []clientv3.OpOption
	if ttl > 0 {
		g, err := s.cli.Grant(ctx, int64(ttl.Seconds()))
		if err != nil {
			return fmt.Errorf("grant etcd lease: %w", err)
		}
		opts = append(opts, clientv3.WithLease(g.ID))
	}
	ops := make([]clientv3.Op, 0, len(leases))
	for _, l := range leases {
		v, err := l.Attrs.Encode()
		if err != nil {
			return fmt.Errorf("lease %s: %w", l.Subnet, err)
		}
		ops = append(ops, clientv3.OpPut(s.LeaseKey(l.Subnet), string(v), opts...))
	}
	if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("write %d leases: %w", len(leases), err)
	}
	return nil
}

// DeleteLease removes a subnet's lease key (its etcd lease is left to expire).
func (s *Store) DeleteLease(ctx context.Context, subnet netip.Prefix) error {
	if _, err := s.cli.Delete(ctx, s.LeaseKey(subnet)); err != nil {
		return fmt.Errorf("delete %s: %w", s.LeaseKey(subnet), err)
	}
	return nil
}
