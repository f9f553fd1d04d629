// Package vxlan is Weft's VXLAN backend, the default datapath. It is wire-
// and store-compatible with flannel's vxlan backend: the same device
// (flannel.<VNI>, UDP port 8472, learning off), the same lease data
// ({"VNI":1,"VtepMAC":"…"}), so flannel and Weft hosts can share a cluster.
//
// # Design
//
// Every host owns one VXLAN device. Its address is the host subnet's network
// address as a /32, and its MAC (the VtepMAC) is published in the lease.
// Traffic to a peer's pods leaves through that device; what the kernel needs
// to encapsulate it lives in three tables, and the order in which they are
// written matters:
//
//   - FDB (bridge family, on the device): peer VtepMAC → peer PublicIP, the
//     underlay address the encapsulated frame is sent to.
//   - Neighbours (IPv4, on the device): peer's overlay address → peer VtepMAC,
//     so the kernel never has to ARP across the tunnel.
//   - Routes (main table, protocol 87 via package routes).
//
// # Static mode (the default)
//
// For each peer: a permanent neighbour for the peer subnet's network address,
// a permanent FDB entry for the peer's VtepMAC, and the route
// "<peer subnet> via <peer network address> dev flannel.1 onlink". Entries are
// added FDB → neighbour → route, so by the time a route can send a packet its
// next hop is resolved and its MAC has a destination, and removed in the
// reverse order (route → neighbour → FDB). With DirectRouting, peers whose
// PublicIP lies on a subnet of the underlay interface get a plain host-gw
// route "<peer subnet> via <PublicIP> dev <underlay>" and no tunnel entries.
//
// # Reactive mode ("Mode": "reactive")
//
// For large clusters where each host talks to few others. One device route
// covers the whole overlay network; the device is created with proxy ARP and
// L2/L3 miss notifications, and its neighbour settings send every address
// resolution to user space (no unicast or broadcast ARP, three application
// probes: RTM_GETNEIGH messages). When the kernel lacks a neighbour for a pod
// address (an L3 miss, or an application probe), Weft finds the peer whose
// subnet holds the address and answers with an FDB entry and then a
// neighbour entry, both NUD_REACHABLE; an L2 miss (a MAC without a
// destination) is answered with the FDB entry. The kernel re-probes entries
// in use after its reachable time and Weft confirms them, so an active flow
// never loses its entry. A host then holds entries only for the peers it
// talks to: entries of a peer that nothing was sent to for five minutes
// (the FDB entry's "used" time, refreshed by every transmitted frame) are
// removed by Reconcile. The device's own FDB ageing is pushed out to a year,
// because it counts from the last update rather than the last use and would
// cut active flows. While weftd is stopped the entries in place keep
// working, but nobody answers new misses: a flow to a peer this host had no
// entries for waits until weftd is back (static mode has no such gap).
//
// # Fast path ("FastPath": true)
//
// Opt-in, static mode only (not with DirectRouting). Two tc programs of raw
// BPF instructions (loaded without a compiler or a BPF library) take the
// pod bridge and IP forwarding out of the path between pods on different
// hosts:
//
//   - Out: on the clsact ingress of every veth enslaved to the pod bridge
//     (option Bridge, default "cni0"), an IPv4 packet whose destination lies
//     in the overlay network but outside this host's subnet is handed to
//     the VXLAN device with bpf_redirect_neigh, which resolves it through
//     the route and permanent neighbour static mode already wrote. The
//     program holds only constants (overlay prefix, own subnet, device
//     index).
//   - In: on the VXLAN device's clsact ingress (after decapsulation), an
//     IPv4 packet for a pod in the pod map gets the pod's MAC as
//     destination and the bridge's as source and goes straight into the
//     pod's namespace with bpf_redirect_peer. The map (BPF hash, pod
//     address → host-side veth, pod MAC, bridge MAC) is filled by Reconcile
//     from the bridge's neighbour table (address → MAC) and FDB (MAC →
//     port), so a new pod takes the normal path until the host has
//     resolved it once and the next Reconcile has run.
//
// Everything else (ARP, the host's own addresses, traffic between pods on
// one host, pods the map does not know yet) goes the normal way. Packets on
// the fast path skip netfilter on this host: FORWARD-chain rules (network
// policy, counters) no longer see them, and the TTL is not decremented.
// When a pod is deleted and its address given to a new pod before the next
// Reconcile, packets for it from other hosts are dropped until that
// Reconcile (at most one resync period); the map is rebuilt from the
// kernel's tables every time, so nothing stale outlives it.
//
// The programs are reloaded and the filters replaced when the device is
// recreated or weftd restarts; a new pod's veth is found by the next
// Reconcile (one link dump; a filter list per port). Weft's filter is the
// one at parent ffff:fff2 with priority and handle 0x5746 named
// "weft_fastpath"; Weft adds a clsact qdisc where a link has none, leaves it
// in place afterwards, and never touches other qdiscs or filters. With
// FastPath off, the first Reconcile removes Weft's filters of an earlier
// run. If the kernel refuses a program (no BPF, no CAP_BPF), Weft logs it
// once and that half uses the normal path; Reconcile never fails for it.
//
// # What Weft owns
//
// Routes are Weft's when they carry protocol 87 and their destination lies in
// the overlay network. Neighbour and FDB entries carry no owner mark in the
// kernel, so the rule is by device: the VXLAN device is Weft's (created by
// Weft or adopted from flannel on migration, where its entries have exactly
// the shape Weft would write), and Weft manages the entries on it that hold a
// link-layer address: permanent entries must match a current peer or are
// removed; reachable/stale entries (reactive answers) are removed when the
// peer is gone or its address changed; entries the kernel is still resolving
// are left to the kernel. Weft never touches neighbours, FDB entries or routes
// on any other device.
//
// # Reconciliation
//
// Reconcile is level-triggered and cheap: one dump per table (link, FDB,
// neighbours, routes), a diff against the desired state computed from the
// leases, then only the differences are written. A device deleted by hand is
// recreated on the next Reconcile and, since the dumps then come back empty,
// every entry is replayed. Entries of peers that left while weftd was down
// are removed by the first Reconcile.
//
// Writes go out in batches: hundreds of netlink requests per sendmsg on one
// socket, then one pass over the acknowledgements, instead of a request and
// a reply per entry. Routes are written with a metric derived from the
// destination (see routes.Metric): the kernel's next-hop hash ignores
// gateways, so thousands of routes with distinct gateways on one device
// otherwise share a hash chain and each insert walks it. A route that must
// change is removed and added again in the same batch (a replace would keep
// the old metric's route beside the new one). Package routes, the shared
// reconciler, decides what this fast path leaves alone: destinations that
// also carry a route Weft did not make, and anything after a failed write.
// 5000 peers are programmed in about 0.1 s; a resync of 5000 unchanged
// peers takes about 0.02 s.
//
// # The VtepMAC
//
// Peers hold permanent entries for this host's VtepMAC, so it must not change
// when weftd restarts or the host reboots. It is kept in Host.StateDir; on
// first start it is taken from an existing device (a flannel host moving to
// Weft keeps its MAC) or else derived from the host's PublicIP and the VNI, so
// even a lost state directory yields the same MAC.
//
// # Offloads
//
// Kernels before 5.7 compute a wrong outer UDP checksum for VXLAN packets
// that were NATed with random-fully masquerading (flannel issue 1279, Calico
// issue 3145). On such kernels Weft turns off tx checksum offload on the
// device (which also turns off TSO, so it is not done where not needed) and
// logs it; option TxChecksumOffload ("auto", "on", "off") overrides. On
// every start and device creation Weft also turns TSO and GSO back on on the
// device if someone turned them off, keeps BIG TCP off it (oversized GSO
// packets are cut in the tunnel), and warns when the underlay device cannot
// segment tunnelled packets (tx-udp_tnl-segmentation): without these the
// tunnel runs at a third of its speed or less.
package vxlan
