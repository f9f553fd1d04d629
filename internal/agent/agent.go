// Package agent is weftd's control loop. Read top to bottom, [Agent.Run] is
// the lease lifecycle of one host:
//
//  1. read the network config from etcd (wait for it to exist);
//  2. find the underlay interface and the address to publish;
//  3. build the backend named by the config and let it create its devices;
//  4. acquire this host's subnet (reusing its own lease or the subnet
//     remembered in subnet.env when that is still ours) and keep it renewed;
//  5. write subnet.env and start the backend;
//  6. reconcile the datapath with the peers' leases: at start, on every
//     watch event and every resync period, level-triggered.
//
// On shutdown nothing is torn down: routes, devices and the lease stay so
// that traffic flows while weftd restarts.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backends"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/store"
	"github.com/weft-net/weft/internal/subnetenv"
)

// Masquerader keeps the host's masquerade rules in place (internal/masq).
type Masquerader interface {
	// Ensure creates or repairs the rules for pods of hostSubnet in network.
	Ensure(network, hostSubnet netip.Prefix) error
	// Keep ensures the rules and restores them as soon as they are changed,
	// until ctx is done.
	Keep(ctx context.Context, network, hostSubnet netip.Prefix) error
}

// Config is weftd's configuration (its flags).
type Config struct {
	// Iface is the underlay interface, by name or by one of its addresses;
	// empty means the interface of the default route.
	Iface string
	// PublicIP overrides the address published in the lease (hosts behind
	// NAT); empty means the interface's address.
	PublicIP string
	// SubnetFile is where subnet.env is written.
	SubnetFile string
	// StateDir keeps backend state across restarts.
	StateDir string
	// IPMasq turns on masquerading of pod traffic leaving the overlay.
	IPMasq bool
	// LeaseTTL is the etcd lease's time to live.
	LeaseTTL time.Duration
	// ResyncPeriod is how often the datapath is compared with the kernel
	// even when nothing changed.
	ResyncPeriod time.Duration
	// BackendOverride is a JSON object merged over the network config's
	// Backend object on this host only (it may not change Type).
	BackendOverride string
}

// Agent is one host's weftd.
type Agent struct {
	cfg   Config
	store *store.Store
	masq  Masquerader
	log   *slog.Logger
	ready atomic.Bool
	// lastErr is the previous reconcile's error text, so that a problem that
	// persists is logged once, not every resync period.
	lastErr string
	// metrics are served on /metrics.
	metrics metrics
}

// metrics are the agent's counters and gauges, read by the health server.
type metrics struct {
	reconciles, reconcileErrors, acquisitions atomic.Uint64
	peers, lastReconcileNanos                 atomic.Int64
	counters                                  atomic.Pointer[backend.Counters]
}

// New returns an agent using st for leases. masq may be nil when IPMasq is
// off.
func New(cfg Config, st *store.Store, masq Masquerader, log *slog.Logger) *Agent {
	return &Agent{cfg: cfg, store: st, masq: masq, log: log}
}

// Ready reports whether the lease is held, the datapath programmed once and
// subnet.env written.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Run runs the agent until ctx is done. It returns nil on a clean stop and
// an error when the host cannot take part in the network.
func (a *Agent) Run(ctx context.Context) error {
	network, err := a.waitConfig(ctx)
	if err != nil {
		return err
	}
	if network.EnableIPv4 {
		a.log.Info("network config", "network", network.Network, "subnet_len", network.SubnetLen,
			"subnet_min", network.SubnetMin, "subnet_max", network.SubnetMax, "backend", network.BackendType)
	}
	host, err := a.hostInfo(network)
	if err != nil {
		return err
	}
	be, err := a.newBackend(network, host)
	if err != nil {
		return err
	}
	if c, ok := be.(backend.Counters); ok {
		a.metrics.counters.Store(&c)
	}
	local, err := be.Init(ctx)
	if err != nil {
		return fmt.Errorf("backend %s: init: %w", network.BackendType, err)
	}
	attrs := lease.Attrs{PublicIP: host.PublicIP, BackendType: local.Type, BackendData: local.Data}
	own, err := a.acquire(ctx, network, attrs, a.previousSubnet(network))
	if err != nil {
		return err
	}
	env := subnetenv.New(network.Network, own.Subnet, local.MTU, a.cfg.IPMasq)
	if err := subnetenv.Write(a.cfg.SubnetFile, env); err != nil {
		return err
	}
	a.log.Info("subnet.env written", "path", a.cfg.SubnetFile, "subnet", env.Subnet, "mtu", env.MTU)
	if err := ensureIPForward(a.log); err != nil {
		a.log.Warn("cannot enable IPv4 forwarding; pods will not reach other hosts", "err", err)
	}
	if err := be.Start(ctx, own); err != nil {
		return fmt.Errorf("backend %s: start: %w", network.BackendType, err)
	}
	if a.cfg.IPMasq && a.masq != nil {
		go func() {
			// Every resync ensures the rules too; Keep only makes repairs
			// immediate, so its failure is logged, not fatal.
			if err := a.masq.Keep(ctx, network.Network, own.Subnet); err != nil {
				a.log.Warn("cannot watch the masquerade rules; they are repaired every resync period instead", "err", err)
			}
		}()
	}
	return a.loop(ctx, network, be, own, attrs)
}

// loop reconciles until ctx is done, re-acquiring the lease if it is lost.
func (a *Agent) loop(ctx context.Context, network *config.Network, be backend.Backend, own lease.Lease, attrs lease.Attrs) error {
	leases := store.NewLeaseSet()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go a.store.WatchLeases(wctx, leases)

	keep := a.keepAlive(ctx, own)
	defer func() { keep.stop() }()

	tick := time.NewTicker(a.cfg.ResyncPeriod)
	defer tick.Stop()
	// current is the latest snapshot of all leases; peers is derived from it
	// and our subnet, anew (nil) only when either changes, so that a resync
	// of an unchanged cluster allocates nothing here.
	var current, peers []lease.Lease
	haveLeases := false
	for {
		select {
		case <-ctx.Done():
			a.log.Info("stopping; the datapath and the lease stay in place", "subnet", own.Subnet)
			return nil
		case <-leases.Changed():
			current, haveLeases = leases.Leases()
			peers = nil
			if gone := ownMissing(current, own); gone != "" {
				a.log.Warn("our lease changed in etcd; acquiring again", "subnet", own.Subnet, "reason", gone)
				next, err := a.reacquire(ctx, network, attrs, own)
				if err != nil {
					return err
				}
				keep.stop()
				keep, own = a.keepAlive(ctx, next), next
			}
		case <-keep.lost:
			a.log.Warn("our etcd lease expired; acquiring again", "subnet", own.Subnet)
			next, err := a.reacquire(ctx, network, attrs, own)
			if err != nil {
				return err
			}
			keep.stop()
			keep, own = a.keepAlive(ctx, next), next
			peers = nil
			continue
		case <-tick.C:
		}
		if !haveLeases {
			continue
		}
		if peers == nil {
			peers = peersExcept(current, own.Subnet)
		}
		a.reconcile(ctx, network, be, own, peers)
	}
}

// peersExcept returns every lease but the one of subnet own, in a new slice.
func peersExcept(all []lease.Lease, own netip.Prefix) []lease.Lease {
	peers := make([]lease.Lease, 0, len(all))
	for _, l := range all {
		if l.Subnet != own {
			peers = append(peers, l)
		}
	}
	return peers
}

// renewal is a running renewal of one lease.
type renewal struct {
	lost <-chan struct{} // closed when the lease is lost
	stop context.CancelFunc
}

func (a *Agent) keepAlive(ctx context.Context, l lease.Lease) renewal {
	kctx, cancel := context.WithCancel(ctx)
	return renewal{lost: a.store.KeepAlive(kctx, l), stop: cancel}
}

// reconcile brings the datapath (and masquerade rules) in line with peers,
// every lease but our own.
func (a *Agent) reconcile(ctx context.Context, network *config.Network, be backend.Backend, own lease.Lease, peers []lease.Lease) {
	start := time.Now()
	err := be.Reconcile(ctx, peers)
	a.metrics.reconciles.Add(1)
	a.metrics.peers.Store(int64(len(peers)))
	a.metrics.lastReconcileNanos.Store(int64(time.Since(start)))
	if err != nil {
		a.metrics.reconcileErrors.Add(1)
	}
	switch {
	case err != nil && err.Error() != a.lastErr:
		a.log.Warn("datapath reconciled with errors", "peers", len(peers), "err", err)
	case err != nil:
		a.log.Debug("datapath reconciled with the same errors as before", "peers", len(peers))
	case a.lastErr != "":
		a.log.Info("datapath reconciled without errors again", "peers", len(peers))
	default:
		a.log.Debug("datapath reconciled", "peers", len(peers), "took", time.Since(start))
	}
	a.lastErr = ""
	if err != nil {
		a.lastErr = err.Error()
	}
	if a.cfg.IPMasq && a.masq != nil {
		if err := a.masq.Ensure(network.Network, own.Subnet); err != nil {
			a.log.Warn("masquerade rules not in place", "err", err)
		}
	}
	if !a.ready.Swap(true) {
		a.log.Info("ready", "subnet", own.Subnet, "peers", len(peers), "took", time.Since(start))
	}
}

// ownMissing says why the current leases no longer show ours, or "".
func ownMissing(all []lease.Lease, own lease.Lease) string {
	for _, l := range all {
		if l.Subnet == own.Subnet {
			if l.Attrs.PublicIP != own.Attrs.PublicIP {
				return "the subnet now belongs to " + l.Attrs.PublicIP.String()
			}
			return ""
		}
	}
	return "the key was deleted"
}

// reacquire gets a lease again after ours was lost. A different subnet
// cannot be taken over in place (pods hold addresses of the old one), so
// weftd stops and lets its supervisor restart it.
func (a *Agent) reacquire(ctx context.Context, network *config.Network, attrs lease.Attrs, old lease.Lease) (lease.Lease, error) {
	next, err := a.acquire(ctx, network, attrs, old.Subnet)
	if err != nil {
		return next, err
	}
	if next.Subnet != old.Subnet {
		return next, fmt.Errorf("lease lost: %s was given to another host and this host now holds %s; restart weftd (and re-create pods) to use it", old.Subnet, next.Subnet)
	}
	a.log.Info("lease re-acquired", "subnet", next.Subnet)
	return next, nil
}

// acquire retries store.Acquire with backoff until it succeeds or ctx ends.
func (a *Agent) acquire(ctx context.Context, network *config.Network, attrs lease.Attrs, previous netip.Prefix) (lease.Lease, error) {
	backoff := time.Second
	for {
		l, err := a.store.Acquire(ctx, store.AcquireRequest{Network: network, Attrs: attrs, TTL: a.cfg.LeaseTTL, Previous: previous})
		if err == nil {
			a.metrics.acquisitions.Add(1)
			a.log.Info("lease acquired", "subnet", l.Subnet, "public_ip", attrs.PublicIP, "reserved", l.Reserved(), "etcd_lease", fmt.Sprintf("%x", l.EtcdLease))
			return l, nil
		}
		if ctx.Err() != nil {
			return l, ctx.Err()
		}
		a.log.Error("cannot acquire a subnet lease; retrying", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return l, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// waitConfig reads the network config, waiting while it is absent or etcd
// unreachable. An invalid config is fatal: it will not fix itself.
func (a *Agent) waitConfig(ctx context.Context) (*config.Network, error) {
	backoff := 500 * time.Millisecond
	for {
		n, err := a.store.GetConfig(ctx)
		if err == nil {
			if err := backends.Validate(n); err != nil {
				return nil, fmt.Errorf("%s: %w", a.store.ConfigKey(), err)
			}
			return n, nil
		}
		var fe *config.FieldError
		if errors.As(err, &fe) {
			return nil, err
		}
		a.log.Warn("waiting for the network config", "key", a.store.ConfigKey(), "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// previousSubnet returns the subnet of an existing subnet.env when it fits
// the network, so a restarted host asks for it first.
func (a *Agent) previousSubnet(network *config.Network) netip.Prefix {
	env, err := subnetenv.Read(a.cfg.SubnetFile)
	if err != nil {
		return netip.Prefix{}
	}
	if p := env.HostSubnet(); network.Assignable(p) {
		return p
	}
	return netip.Prefix{}
}

// newBackend builds the backend named in the config, with this host's
// override merged into its options.
func (a *Agent) newBackend(network *config.Network, host backend.Host) (backend.Backend, error) {
	opts := network.Backend
	if a.cfg.BackendOverride != "" {
		merged, err := mergeOptions(opts, []byte(a.cfg.BackendOverride))
		if err != nil {
			return nil, err
		}
		opts = merged
		n2 := *network
		n2.Backend = opts
		if err := backends.Validate(&n2); err != nil {
			return nil, fmt.Errorf("--backend-override: %w", err)
		}
	}
	kind, _ := backends.Lookup(network.BackendType)
	host.StateDir = filepath.Join(a.cfg.StateDir, kind.Type)
	if err := os.MkdirAll(host.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	host.Log = a.log.With("backend", kind.Type)
	be, err := kind.New(host, opts)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", kind.Type, err)
	}
	return be, nil
}

// mergeOptions merges the override object over the Backend object.
func mergeOptions(base, override []byte) (json.RawMessage, error) {
	var b, o map[string]json.RawMessage
	if err := json.Unmarshal(base, &b); err != nil {
		return nil, fmt.Errorf("backend options: %w", err)
	}
	if err := json.Unmarshal(override, &o); err != nil || o == nil {
		return nil, errors.New("--backend-override: must be a JSON object such as {\"Mode\":\"reactive\"}")
	}
	if b == nil {
		b = map[string]json.RawMessage{}
	}
	for k, v := range o {
		if k == "Type" && string(v) != string(b["Type"]) {
			return nil, errors.New("--backend-override: may not change Backend.Type")
		}
		b[k] = v
	}
	return json.Marshal(b)
}

// hostInfo finds the underlay interface and the address to publish.
func (a *Agent) hostInfo(network *config.Network) (backend.Host, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return backend.Host{}, fmt.Errorf("netlink: %w", err)
	}
	iface, err := findIface(h, a.cfg.Iface)
	if err != nil {
		return backend.Host{}, err
	}
	public := iface.Addr
	if a.cfg.PublicIP != "" {
		public, err = netip.ParseAddr(a.cfg.PublicIP)
		if err != nil || !public.Is4() {
			return backend.Host{}, fmt.Errorf("--public-ip %q is not an IPv4 address", a.cfg.PublicIP)
		}
	}
	a.log.Info("underlay", "iface", iface.Name, "addr", iface.Addr, "mtu", iface.MTU, "public_ip", public)
	return backend.Host{Network: network, PublicIP: public, Iface: iface, Netlink: h, NetNS: netns.None()}, nil
}
