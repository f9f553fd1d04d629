package vxlan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/routes"
)

// Type is the backend's name in Backend.Type and the leases' BackendType.
const Type = "vxlan"

// Kind returns the VXLAN backend's [backend.Kind].
func Kind() backend.Kind {
	return backend.Kind{
		Type:     Type,
		Validate: validate,
		New: func(h backend.Host, opts json.RawMessage) (backend.Backend, error) {
			return New(h, opts)
		},
	}
}

// Backend is the VXLAN datapath of one host. Init, Start and Reconcile are
// called from one goroutine; the reactive miss handler runs beside them and
// reads the peer table and device index through atomics.
type Backend struct {
	host backend.Host
	s    settings
	log  *slog.Logger

	mac hwAddr
	mtu int
	own netip.Prefix // set by Start

	// linkIndex is the device's current index (0 before Init); it changes
	// when the device is recreated.
	linkIndex atomic.Int64
	// table holds the current *peerTable.
	table atomic.Pointer[peerTable]

	// warned remembers the lease problems already logged, so a bad lease is
	// reported once rather than every resync.
	warned map[string]bool
	// idle is how long an unused reactive neighbour entry is kept.
	idle time.Duration
	// rcv is the netlink receive buffer, kept across syncs.
	rcv []byte
	// have, fdbs, neighs and routes are scratch space kept across syncs.
	have         []bool
	fdbs, neighs []kentry
	routeDump    routeDump
	want         []routes.Route
	wanted       map[netip.Prefix]bool

	// fast is the fast path's state (option FastPath).
	fast fastPath

	startOnce sync.Once
}

// New builds the backend for h from the raw Backend object. Nothing is
// touched yet.
func New(h backend.Host, opts json.RawMessage) (*Backend, error) {
	s, err := parseOptions(opts)
	if err != nil {
		return nil, err
	}
	if h.Network == nil {
		return nil, errors.New("vxlan: host has no network configuration")
	}
	if h.Netlink == nil {
		return nil, errors.New("vxlan: host has no netlink handle")
	}
	log := h.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Backend{host: h, s: s, log: log.With("device", s.device), warned: map[string]bool{}, idle: reactiveIdle}, nil
}

// Device returns the name of the VXLAN device.
func (b *Backend) Device() string { return b.s.device }

// VtepMAC returns the device's MAC address, valid after Init.
func (b *Backend) VtepMAC() string { return b.mac.String() }

func (b *Backend) spec() deviceSpec {
	return deviceSpec{
		name:     b.s.device,
		vni:      b.s.vni,
		port:     b.s.port,
		gbp:      b.s.gbp,
		learning: b.s.learning,
		reactive: b.s.mode == ModeReactive,
		mtu:      b.mtu,
		mac:      b.mac,
		underlay: b.host.Iface.Index,
		local:    b.host.Iface.Addr,
	}
}

// Init creates or adopts the VXLAN device and returns the lease data.
func (b *Backend) Init(ctx context.Context) (backend.Local, error) {
	b.mtu = b.s.mtu
	if b.mtu == 0 {
		under := b.host.Iface.MTU
		if under == 0 {
			under = 1500
		}
		b.mtu = under - Overhead
		if b.mtu < 576 {
			return backend.Local{}, fmt.Errorf("vxlan: underlay %s MTU %d leaves %d for the overlay, below 576; set Backend.MTU", b.host.Iface.Name, under, b.mtu)
		}
	}
	mac, err := b.chooseMAC()
	if err != nil {
		return backend.Local{}, err
	}
	b.mac = mac
	idx, created, err := b.ensureDevice(b.spec())
	if err != nil {
		return backend.Local{}, fmt.Errorf("vxlan: %w", err)
	}
	b.linkIndex.Store(int64(idx))
	if created {
		b.log.Info("created VXLAN device", "vni", b.s.vni, "port", b.s.port, "mtu", b.mtu, "vtep_mac", b.mac.String(), "mode", b.s.mode)
	} else {
		b.log.Info("adopted VXLAN device", "vni", b.s.vni, "port", b.s.port, "mtu", b.mtu, "vtep_mac", b.mac.String(), "mode", b.s.mode)
	}
	if err := b.configureDevice(); err != nil {
		return backend.Local{}, fmt.Errorf("vxlan: %w", err)
	}
	return backend.Local{Type: Type, Data: encodeLeaseData(b.s.vni, b.mac), MTU: b.mtu}, nil
}

// chooseMAC returns the VtepMAC: the persisted one, else the existing
// device's (a flannel host keeps its MAC when it moves to Weft), else one
// derived from the host's public address; and persists it.
func (b *Backend) chooseMAC() (hwAddr, error) {
	var path string
	if b.host.StateDir != "" {
		path = macFile(b.host.StateDir, b.s.device)
		m, ok, err := loadMAC(path)
		if err != nil {
			b.log.Warn("ignoring unreadable persisted VtepMAC", "error", err)
		}
		if ok {
			return m, nil
		}
	}
	m, source := hwAddr{}, ""
	if l, err := b.host.Netlink.LinkByName(b.s.device); err == nil {
		if v, ok := l.(*netlink.Vxlan); ok {
			if em, err := toHwAddr(v.HardwareAddr); err == nil {
				m, source = em, "existing device"
			}
		}
	}
	if source == "" {
		if !b.host.PublicIP.IsValid() {
			return m, errors.New("vxlan: no PublicIP to derive the VtepMAC from")
		}
		m, source = deriveMAC(b.host.PublicIP, b.s.vni, b.s.macPrefix), "derived from PublicIP and VNI"
	}
	if path != "" {
		if err := saveMAC(path, m); err != nil {
			return m, fmt.Errorf("vxlan: %w", err)
		}
	}
	b.log.Info("chose VtepMAC", "vtep_mac", m.String(), "source", source, "persisted_in", path)
	return m, nil
}

// configureDevice applies what a fresh device needs beyond its link
// attributes: checksum offload and, in reactive mode, the neighbour
// settings that send resolution requests to Weft.
func (b *Backend) configureDevice() error {
	var errs []error
	if err := b.ensureChecksumOffload(); err != nil {
		errs = append(errs, err)
	}
	if b.s.mode == ModeReactive {
		if err := b.ensureNeighSysctls(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Start gives the device its address (the subnet's network address as a
// /32) and, in reactive mode, starts answering the kernel's misses.
func (b *Backend) Start(ctx context.Context, own lease.Lease) error {
	if !own.Subnet.Addr().Is4() {
		return fmt.Errorf("vxlan: own subnet %s is not IPv4", own.Subnet)
	}
	b.own = own.Subnet
	if err := b.ensureAddr(int(b.linkIndex.Load()), b.own.Addr()); err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	if b.s.mode == ModeReactive {
		var err error
		b.startOnce.Do(func() { err = b.startMisses(ctx) })
		if err != nil {
			return fmt.Errorf("vxlan: %w", err)
		}
	}
	return nil
}

// Reconcile programs the device, FDB, neighbours and routes for peers.
func (b *Backend) Reconcile(ctx context.Context, peers []lease.Lease) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	idx, created, err := b.ensureDevice(b.spec())
	if err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	var errs []error
	if created {
		b.log.Warn("VXLAN device was missing or changed; recreated it and replaying every entry", "peers", len(peers))
		if err := b.configureDevice(); err != nil {
			errs = append(errs, err)
		}
	}
	b.linkIndex.Store(int64(idx))
	if b.own.IsValid() {
		if err := b.ensureAddr(idx, b.own.Addr()); err != nil {
			errs = append(errs, err)
		}
	}
	var direct func(netip.Addr) bool
	if b.s.directRouting {
		d, err := b.underlaySegments()
		if err != nil {
			errs = append(errs, err)
		}
		direct = d
	}
	t, problems := buildPeers(peers, b.own, b.host.Network.Network, b.s.vni, direct, b.table.Load(), peer{public: b.host.PublicIP, mac: b.mac})
	seen := make(map[string]bool, len(problems))
	for _, p := range problems {
		msg := p.Error()
		seen[msg] = true
		if !b.warned[msg] {
			b.log.Warn("skipping lease", "error", p)
		}
	}
	b.warned = seen
	b.table.Store(t)
	st, err := b.syncEntries(idx, t, b.own)
	if err != nil {
		errs = append(errs, err)
	}
	b.reconcileFastPath(idx)
	if st.changed() {
		b.log.Info("reconciled", "peers", len(t.peers), "fdb_added", st.fdbAdded, "neigh_added", st.neighAdded,
			"routes_added", st.routesAdded+st.routes.Added+st.routes.Replaced, "routes_removed", st.routesRemoved+st.routes.Removed,
			"neigh_removed", st.neighRemoved, "fdb_removed", st.fdbRemoved, "took", time.Since(start))
	}
	if st.changes() >= bigChange {
		// Programming thousands of peers at once (a cold start, a large
		// cluster joining) leaves megabytes of decoded leases and dump
		// buffers behind; hand them back now rather than letting weftd's
		// resident memory sit at its peak until the scavenger gets there
		// (5000 peers: 31-35 MB without this, 25 MB with it).
		debug.FreeOSMemory()
	}
	return errors.Join(append(errs, problems...)...)
}

// bigChange is the number of kernel entries changed in one Reconcile above
// which the backend returns freed memory to the OS right away.
const bigChange = 1000

// underlaySegments returns a function reporting whether an address lies on
// one of the underlay interface's IPv4 subnets (DirectRouting).
func (b *Backend) underlaySegments() (func(netip.Addr) bool, error) {
	if b.host.Iface.Index == 0 {
		return nil, nil
	}
	l, err := b.host.Netlink.LinkByIndex(b.host.Iface.Index)
	if err != nil {
		return nil, fmt.Errorf("vxlan: DirectRouting: look up underlay #%d: %w", b.host.Iface.Index, err)
	}
	addrs, err := b.host.Netlink.AddrList(l, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("vxlan: DirectRouting: list underlay addresses: %w", err)
	}
	var segs []netip.Prefix
	for _, a := range addrs {
		ip := ipOf(a.IP)
		ones, _ := a.Mask.Size()
		if ones < 32 {
			segs = append(segs, netip.PrefixFrom(ip, ones).Masked())
		}
	}
	return func(x netip.Addr) bool {
		for _, s := range segs {
			if s.Contains(x) {
				return true
			}
		}
		return false
	}, nil
}
