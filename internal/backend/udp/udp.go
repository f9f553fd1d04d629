// Package udp is the udp backend: a userspace datapath that speaks flannel's
// udp wire format. A TUN device (flannel0 by default) carries every packet
// for the overlay network to weftd, which sends it in a UDP datagram (port
// 8285 by default) to the peer whose subnet holds the destination; the
// peer's weftd checks the datagram and writes the packet back through its
// own TUN. The UDP payload is exactly the inner IPv4 packet, with no header
// of its own, so a Weft host and a flannel host on the udp backend reach each
// other's pods.
//
// Unlike flannel's, which moves one packet per system call, the packet path
// here is batch-shaped end to end and uses the kernel's offloads through
// wireguard-go's tun and conn packages: the TUN device has the virtio-net
// header with TSO/USO so a read returns a whole TCP super-packet (split in
// user space into MTU-sized packets), sends use UDP GSO, receives UDP GRO,
// and writes into the TUN coalesce TCP segments again.
//
// # Forwarding, as a router would
//
// The kernels on both ends are the routers: the sending host's kernel
// decrements the TTL when it forwards a pod's packet into the TUN device
// (and answers TTL expiry with ICMP time-exceeded), and the receiving host's
// kernel does the same when it forwards the packet from the TUN device to
// the pod. The tunnel between them is a link, so weftd leaves the TTL alone,
// as the kernel's own tunnels (and so Weft's vxlan backend) do: a pod is the
// same number of hops away whatever the backend, and a traceroute across the
// overlay shows each host that forwarded the packet. (flannel's udp proxy
// decrements the TTL once more on each side and drops a packet whose TTL
// reaches 0 without an ICMP time-exceeded, so its extra hops show as
// silent ones.) weftd drops packets with TTL 0, which no router emits. A
// destination inside the overlay network that no peer holds is answered
// with ICMP destination-unreachable (network unreachable) from the TUN
// device's address, following RFC 1812's rules on when not to answer, with
// a rate limit, and only once the first Reconcile has listed the peers.
//
// # Trust
//
// A datagram is accepted only if it comes from the PublicIP of a current
// udp peer and from the udp port (peers send from the socket they listen
// on, as flannel does; a pod on the peer whose traffic the peer
// masquerades does not), holds a well-formed IPv4 packet (version, header
// length, total length equal to the datagram's, header checksum, TTL),
// whose source routes back to that peer (its longest match among the peer
// subnets is one of that peer's) and whose destination lies in this host's
// subnet. Everything else is dropped and counted ([Backend.Stats]) and the
// drops are logged by reason at each Reconcile. flannel injects whatever
// arrives on its port. Without authentication on the wire, a machine that
// can forge the source address of a peer on the underlay can still inject
// packets; the checks bound what it can say (only from that peer's
// subnets, only to this host's).
//
// # Restarts
//
// The TUN device is persistent (TUNSETPERSIST): when weftd stops, the device,
// its address and the overlay route stay, and the next weftd attaches to the
// same device, so traffic stops only while no weftd is attached. Should the
// device be deleted under a running weftd, the next Reconcile recreates it
// and restarts the packet path.
package udp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/routes"
	"golang.org/x/sys/unix"
)

// Type is the backend's name in Backend.Type. Its leases carry an empty
// BackendType, as flannel's udp backend writes them; leases with "udp" are
// accepted as well.
const Type = "udp"

// Defaults, as flannel's.
const (
	// DefaultPort is the UDP port datagrams are sent to and received on.
	DefaultPort = 8285
	// DefaultDevice is the TUN device's name.
	DefaultDevice = "flannel0"
	// Overhead is what the outer IPv4 and UDP headers add to each packet.
	Overhead = 20 + 8
)

// Options are the backend's options in the network config's Backend
// object.
type Options struct {
	// Port is the UDP port (default 8285).
	Port int
	// MTU is the TUN device's MTU (default: the underlay's MTU minus 28).
	MTU int
	// Device is the TUN device's name (default flannel0).
	Device string
	// Queues is the number of TUN queues, each with its own reader
	// (default 0: one per CPU Go may use, at most 8).
	Queues int
}

func parseOptions(raw json.RawMessage) (Options, error) {
	var o Options
	if err := backend.DecodeOptions(raw, &o); err != nil {
		return o, err
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.Port < 1 || o.Port > 65535 {
		return o, &config.FieldError{Field: "Backend.Port", Msg: fmt.Sprintf("%d is not a UDP port (1-65535)", o.Port)}
	}
	if o.MTU != 0 && (o.MTU < 576 || o.MTU > 65535-Overhead) {
		return o, &config.FieldError{Field: "Backend.MTU", Msg: fmt.Sprintf("%d is out of range (576-%d)", o.MTU, 65535-Overhead)}
	}
	if o.Queues < 0 || o.Queues > 64 {
		return o, &config.FieldError{Field: "Backend.Queues", Msg: fmt.Sprintf("%d is out of range (0 for automatic, or 1-64)", o.Queues)}
	}
	if o.Device == "" {
		o.Device = DefaultDevice
	}
	if err := checkIfName(o.Device); err != nil {
		return o, &config.FieldError{Field: "Backend.Device", Msg: err.Error()}
	}
	return o, nil
}

func checkIfName(n string) error {
	if len(n) >= unix.IFNAMSIZ {
		return fmt.Errorf("%q is longer than %d bytes", n, unix.IFNAMSIZ-1)
	}
	if n == "." || n == ".." || strings.ContainsAny(n, "/: \t\n%") {
		return fmt.Errorf("%q is not a valid interface name", n)
	}
	return nil
}

// Kind returns the udp backend's descriptor.
func Kind() backend.Kind {
	return backend.Kind{
		Type: Type,
		Validate: func(raw json.RawMessage) error {
			_, err := parseOptions(raw)
			return err
		},
		New: func(h backend.Host, raw json.RawMessage) (backend.Backend, error) {
			return New(h, raw)
		},
	}
}

// Backend is the udp datapath of one host.
type Backend struct {
	host backend.Host
	opts Options
	mtu  int

	// queues is the TUN device's queues Init attached; Start hands them to
	// the first datapath.
	queues tunQueues
	own    lease.Lease

	// tbl is the forwarding table the packet path reads; Reconcile swaps it.
	tbl atomic.Pointer[table]
	// stats counts what the packet path did.
	stats counters

	// mu guards dp and stopped: Reconcile may replace the datapath while
	// the end of Start's context stops it.
	mu      sync.Mutex
	dp      *datapath
	stopped bool
	// done is closed when the packet path has stopped after Start's ctx
	// ended; nil before Start.
	done chan struct{}
	// reported is the drop counters as last logged by Reconcile.
	reported map[string]uint64
	// saved is the content of the state file as last read or written.
	saved []byte
	// startCalled is set by Start; started is closed by Start when Init
	// had already started the packet path.
	startCalled bool
	started     chan struct{}
}

// New builds the backend for h from the raw Backend object; it touches
// nothing.
func New(h backend.Host, raw json.RawMessage) (*Backend, error) {
	o, err := parseOptions(raw)
	if err != nil {
		return nil, err
	}
	if h.Netlink == nil {
		return nil, errors.New("udp: host has no netlink handle")
	}
	mtu := o.MTU
	if mtu == 0 {
		mtu = h.Iface.MTU - Overhead
		if mtu < 576 {
			return nil, fmt.Errorf("udp: underlay %s MTU %d leaves %d for pods, below 576; set Backend.MTU", h.Iface.Name, h.Iface.MTU, mtu)
		}
	}
	if h.Log == nil {
		return nil, errors.New("udp: host has no logger")
	}
	if h.Iface.MTU > 0 && mtu > h.Iface.MTU-Overhead {
		h.Log.Warn("udp: Backend.MTU leaves no room for the outer headers on the underlay; datagrams will be fragmented", "mtu", mtu, "underlay", h.Iface.Name, "underlay_mtu", h.Iface.MTU)
	}
	return &Backend{host: h, opts: o, mtu: mtu}, nil
}

// Init creates the persistent TUN device, or attaches to the one a previous
// weftd left, sets its MTU and brings it up. If the previous weftd saved
// the peers it served (in Host.StateDir), Init starts forwarding to them
// right away, before the lease is acquired and the peers are read from
// etcd, so a restart interrupts traffic only while no weftd is attached;
// that packet path runs until ctx is done (or Start's, once Start ran). The
// lease carries no backend type or data, as flannel's udp leases.
func (b *Backend) Init(ctx context.Context) (backend.Local, error) {
	if b.queues == nil && b.dp == nil {
		q, err := openTUN(b.host.NetNS, b.opts.Device, b.mtu, b.queueCount())
		if err != nil {
			return backend.Local{}, fmt.Errorf("udp: %w", err)
		}
		b.queues = q
	}
	if err := b.ensureLink(); err != nil {
		return backend.Local{}, fmt.Errorf("udp: %w", err)
	}
	if b.dp == nil {
		st, err := b.loadState()
		if err != nil {
			b.host.Log.Warn("udp: saved peers not used; forwarding starts with the first reconciliation", "err", err)
		}
		if st != nil {
			if err := b.warmStart(ctx, st); err != nil {
				b.host.Log.Warn("udp: cannot forward to the saved peers before the lease is held", "err", err)
			}
		}
	}
	return backend.Local{Type: "", MTU: b.mtu}, nil
}

// warmStart starts the packet path with the saved peers.
func (b *Backend) warmStart(ctx context.Context, st *savedState) error {
	b.own = lease.Lease{Subnet: st.Own}
	var errs []error
	if err := b.ensureAddr(); err != nil {
		errs = append(errs, err)
	}
	if err := b.ensureRoute(); err != nil {
		errs = append(errs, err)
	}
	// Incomplete: no ICMP errors until Reconcile has the current peers.
	t, _ := buildTable(b.host.Network.Network, st.Own, b.host.PublicIP, uint16(b.opts.Port), st.leases())
	b.tbl.Store(t)
	bind, recvs, err := openBind(b.host.NetNS, uint16(b.opts.Port))
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("open UDP port %d: %w", b.opts.Port, err))...)
	}
	b.dp = b.startDatapath(b.queues, bind, recvs)
	b.queues = nil
	b.done = make(chan struct{})
	b.started = make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			b.shutdown()
		case <-b.started:
		}
	}()
	b.host.Log.Info("udp datapath started with the saved peers", "device", b.opts.Device, "peers", len(t.peers), "subnet", st.Own)
	return errors.Join(errs...)
}

// ensureLink sets the TUN device's MTU and brings it up.
func (b *Backend) ensureLink() error {
	link, err := b.host.Netlink.LinkByName(b.opts.Device)
	if err != nil {
		return fmt.Errorf("find TUN device %s: %w", b.opts.Device, err)
	}
	if link.Attrs().MTU != b.mtu {
		if err := b.host.Netlink.LinkSetMTU(link, b.mtu); err != nil {
			return fmt.Errorf("set MTU %d on %s: %w", b.mtu, b.opts.Device, err)
		}
	}
	if link.Attrs().Flags&unix.IFF_UP == 0 {
		if err := b.host.Netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("bring %s up: %w", b.opts.Device, err)
		}
	}
	// ICMP errors weftd writes into the device come from the device's own
	// address; without accept_local the kernel would drop them as martians.
	// Peers cannot abuse it: their packets must come from their own subnets.
	return setSysctl(b.host.NetNS, "net/ipv4/conf/"+b.opts.Device+"/accept_local", "1")
}

// Start gives the TUN device this host's address (the first address of its
// subnet, /32), routes the whole overlay network through it, opens the UDP
// socket and starts the packet path (unless Init already did), which runs
// until ctx is done.
func (b *Backend) Start(ctx context.Context, own lease.Lease) error {
	if b.queues == nil && b.dp == nil {
		return errors.New("udp: Start before Init")
	}
	if b.startCalled {
		return errors.New("udp: started twice")
	}
	if !own.Subnet.Addr().Is4() {
		return fmt.Errorf("udp: own subnet %s is not IPv4", own.Subnet)
	}
	b.startCalled = true
	b.own = own
	if err := b.ensureAddr(); err != nil {
		return fmt.Errorf("udp: %w", err)
	}
	if err := b.ensureRoute(); err != nil {
		return fmt.Errorf("udp: %w", err)
	}
	if b.dp != nil {
		// Running since Init with the saved peers: keep them until the
		// first Reconcile, under this host's subnet as leased now.
		if old := b.tbl.Load(); old.own != own.Subnet.Masked() {
			t, _ := buildTable(b.host.Network.Network, own.Subnet, b.host.PublicIP, uint16(b.opts.Port), old.leases())
			b.tbl.Store(t)
		}
		close(b.started)
	} else {
		// An empty, incomplete table until the first Reconcile: packets to
		// the overlay are dropped (no ICMP errors: peers are not known yet,
		// not absent), nothing is accepted.
		t, _ := buildTable(b.host.Network.Network, own.Subnet, b.host.PublicIP, uint16(b.opts.Port), nil)
		b.tbl.Store(t)
		bind, recvs, err := openBind(b.host.NetNS, uint16(b.opts.Port))
		if err != nil {
			return fmt.Errorf("udp: open UDP port %d: %w", b.opts.Port, err)
		}
		b.dp = b.startDatapath(b.queues, bind, recvs)
		b.queues = nil // owned by the datapath now
		b.done = make(chan struct{})
	}
	go func() {
		<-ctx.Done()
		b.shutdown()
	}()
	b.host.Log.Info("udp datapath started", "device", b.opts.Device, "mtu", b.mtu, "port", b.opts.Port, "subnet", own.Subnet)
	return nil
}

// shutdown stops the packet path for good (the TUN device stays) and
// closes b.done; it may be called more than once.
func (b *Backend) shutdown() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return
	}
	b.stopped = true
	if err := b.dp.stop(); err != nil {
		// wireguard-go's TUN handle reports errors of its own listeners
		// on close (e.g. a pipe already closed); nothing to act on.
		b.host.Log.Debug("udp: close", "err", err)
	}
	b.host.Log.Info("udp datapath stopped; TUN device left in place", "device", b.opts.Device)
	close(b.done)
}

// restartDatapath replaces the packet path with a new one on a new TUN
// device and socket, after the device was deleted under weftd's feet.
func (b *Backend) restartDatapath() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return errors.New("udp: stopped")
	}
	if err := b.dp.stop(); err != nil {
		b.host.Log.Debug("udp: close the old datapath", "err", err)
	}
	q, err := openTUN(b.host.NetNS, b.opts.Device, b.mtu, b.queueCount())
	if err != nil {
		return fmt.Errorf("udp: recreate TUN device: %w", err)
	}
	bind, recvs, err := openBind(b.host.NetNS, uint16(b.opts.Port))
	if err != nil {
		q.Close()
		return fmt.Errorf("udp: reopen UDP port %d: %w", b.opts.Port, err)
	}
	b.dp = b.startDatapath(q, bind, recvs)
	b.host.Log.Warn("udp: TUN device was gone; recreated it and restarted the datapath", "device", b.opts.Device)
	return nil
}

// queueCount is how many TUN queues (and so readers) to attach:
// Backend.Queues, or one per CPU Go may use, at most 8. One TCP flow stays
// on one queue; many flows spread over them.
func (b *Backend) queueCount() int {
	if b.opts.Queues > 0 {
		return b.opts.Queues
	}
	return min(runtime.GOMAXPROCS(0), 8)
}

// tunAddr is the TUN device's address: the first address of the subnet, as
// flannel gives flannel0.
func (b *Backend) tunAddr() netip.Addr { return b.own.Subnet.Masked().Addr() }

// ensureAddr makes the TUN device's IPv4 addresses exactly tunAddr/32.
func (b *Backend) ensureAddr() error {
	link, err := b.host.Netlink.LinkByName(b.opts.Device)
	if err != nil {
		return fmt.Errorf("find TUN device %s: %w", b.opts.Device, err)
	}
	want := netip.PrefixFrom(b.tunAddr(), 32)
	addrs, err := b.host.Netlink.AddrList(link, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", b.opts.Device, err)
	}
	have := false
	var errs []error
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		bits, _ := a.Mask.Size()
		if netip.PrefixFrom(ip, bits) == want {
			have = true
			continue
		}
		// The device is Weft's own: an address from an earlier lease goes.
		if err := b.host.Netlink.AddrDel(link, &a); err != nil {
			errs = append(errs, fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, b.opts.Device, err))
		}
	}
	if !have {
		a := &netlink.Addr{IPNet: prefixToIPNet(want)}
		if err := b.host.Netlink.AddrReplace(link, a); err != nil {
			errs = append(errs, fmt.Errorf("add address %s to %s: %w", want, b.opts.Device, err))
		}
	}
	return errors.Join(errs...)
}

// ensureRoute routes the whole overlay network through the TUN device. It
// owns Weft's route for the network and Weft's routes inside the network
// outside this host's subnet, so the
// per-peer routes another backend left (after a switch from vxlan or
// host-gw, which would take precedence over the network route) go too.
func (b *Backend) ensureRoute() error {
	link, err := b.host.Netlink.LinkByName(b.opts.Device)
	if err != nil {
		return fmt.Errorf("find TUN device %s: %w", b.opts.Device, err)
	}
	network, own := b.host.Network.Network.Masked(), b.own.Subnet.Masked()
	want := []routes.Route{{Dst: network, LinkIndex: link.Attrs().Index}}
	res, err := routes.Sync(b.host.Netlink, unix.AF_INET, want, func(r routes.Route) bool {
		return r.Dst == network || network.Overlaps(r.Dst) && !own.Overlaps(r.Dst)
	})
	if res.Added+res.Replaced+res.Removed > 0 {
		b.host.Log.Info("udp: overlay route reconciled", "added", res.Added, "replaced", res.Replaced, "removed", res.Removed)
	}
	return err
}

// Reconcile rebuilds the forwarding table from peers (leases with
// BackendType "" or "udp") and swaps it in for the packet path; it also
// restores the TUN device's state should someone have changed it. Leases
// that cannot be served are reported in the joined error and left out.
func (b *Backend) Reconcile(ctx context.Context, peers []lease.Lease) error {
	if !b.startCalled || b.dp == nil {
		return errors.New("udp: Reconcile before Start")
	}
	var errs []error
	t, bad := buildTable(b.host.Network.Network, b.own.Subnet, b.host.PublicIP, uint16(b.opts.Port), peers)
	t.complete = true
	for _, err := range bad {
		b.host.Log.Warn("udp: peer not served", "err", err)
	}
	errs = append(errs, bad...)
	old := b.tbl.Swap(t)
	if old == nil || len(old.peers) != len(t.peers) {
		b.host.Log.Info("udp peers", "count", len(t.peers))
	}
	if err := b.saveState(t); err != nil {
		b.host.Log.Warn("udp: cannot save the peers for a quick restart", "err", err)
	}
	if _, err := b.host.Netlink.LinkByName(b.opts.Device); err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return errors.Join(append(errs, fmt.Errorf("udp: find TUN device %s: %w", b.opts.Device, err))...)
		}
		// Deleted by hand: the attached handle is dead. Recreate it.
		if err := b.restartDatapath(); err != nil {
			return errors.Join(append(errs, err)...)
		}
	}
	b.reportDrops()
	if err := b.ensureLink(); err != nil {
		errs = append(errs, err)
	}
	if err := b.ensureAddr(); err != nil {
		errs = append(errs, err)
	}
	if err := b.ensureRoute(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// reportDrops logs the datagrams and packets dropped since the last report,
// by reason, so that refused traffic (a spoofing attempt, a misconfigured
// peer) shows in the log at most once per reconciliation.
func (b *Backend) reportDrops() {
	st := b.Stats()
	now := make(map[string]uint64, len(st.RxDropped)+len(st.TxDropped))
	for k, v := range st.RxDropped {
		now["rx-"+k] = v
	}
	for k, v := range st.TxDropped {
		now["tx-"+k] = v
	}
	var attrs []any
	for k, v := range now {
		if d := v - b.reported[k]; d > 0 {
			attrs = append(attrs, k, d)
		}
	}
	b.reported = now
	if len(attrs) > 0 {
		b.host.Log.Info("udp: packets dropped since the last reconciliation", attrs...)
	}
}

// Done returns a channel closed once the packet path has stopped (after
// Start's context ended, or Init's when Start never ran) and the TUN device
// and socket are closed; the device itself stays. It returns nil before the
// packet path has started.
func (b *Backend) Done() <-chan struct{} { return b.done }
