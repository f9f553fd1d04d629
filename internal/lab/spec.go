package lab

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Defaults used when a [Spec] leaves a field zero.
const (
	DefaultNetwork      = "10.244.0.0/16"
	DefaultResyncPeriod = 10 * time.Second
	DefaultReadyTimeout = 90 * time.Second
	// MaxHosts bounds the host count: host i's underlay address is
	// 198.18.<segment>.(10+i).
	MaxHosts = 200
	// MaxPods bounds the pods per host.
	MaxPods = 50
)

// nameRE accepts lab names. Hyphens are refused so that one lab's namespace
// prefix ("weft-<name>-") can never be a prefix of another lab's.
var nameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)

// Spec describes a lab to bring up.
type Spec struct {
	// Name names the lab: 1 to 16 lower-case letters and digits, starting
	// with a letter. Namespaces are called weft-<Name>-….
	Name string `json:"name"`
	// Hosts is the number of hosts (1..MaxHosts).
	Hosts int `json:"hosts"`
	// Pods is the number of pods per host (0..MaxPods).
	Pods int `json:"pods"`
	// Backend is the backend type written into the network config's
	// Backend.Type (e.g. "host-gw", "vxlan", "udp").
	Backend string `json:"backend"`
	// BackendConfig is the whole Backend object of the network config, for
	// backend options (e.g. {"Type":"vxlan","VNI":4}). Its Type, when
	// present, must agree with Backend.
	BackendConfig json.RawMessage `json:"backend_config,omitempty"`
	// Network is the overlay network (default [DefaultNetwork]).
	Network string `json:"network,omitempty"`
	// ResyncPeriod is passed to every weftd as --resync-period (default
	// [DefaultResyncPeriod]).
	ResyncPeriod time.Duration `json:"resync_period,omitempty"`
	// HostArgs are extra weftd flags per host index (1-based), e.g.
	// {2: {"--backend-override", `{"Mode":"reactive"}`}}.
	HostArgs map[int][]string `json:"host_args,omitempty"`
	// Segments puts hosts on underlay segments by host index (1-based).
	// Segment 0 (the default) is 198.18.0.0/24, where the etcd lives;
	// segment 1 is 198.18.1.0/24, reached from segment 0 only through a
	// router namespace, so its hosts are not on a directly connected
	// network of segment 0's hosts.
	Segments map[int]int `json:"segments,omitempty"`
	// UnderlayMTU is the MTU of the underlay links (default 1500).
	UnderlayMTU int `json:"underlay_mtu,omitempty"`
	// UnderlayNeighbours says how underlay addresses are resolved to MACs:
	// "arp" (as on a real network), "static" (permanent neighbour entries
	// written by the lab) or "" / "auto": static only when the lab is so
	// big that its ARP entries would crowd the kernel's neighbour table,
	// which all namespaces share (net.ipv4.neigh.default.gc_thresh*, set in
	// the root namespace only). Permanent entries are exempt from that
	// limit. After normalize it is "arp" or "static".
	UnderlayNeighbours string `json:"underlay_neighbours,omitempty"`
	// Weftd and Weftctl are the binaries to run. Weftctl runs the lab's
	// etcd (`weftctl etcd`). Empty means: Weftctl is the running program,
	// Weftd sits next to it (or is found on $PATH).
	Weftd   string `json:"weftd,omitempty"`
	Weftctl string `json:"weftctl,omitempty"`
	// ReadyTimeout bounds how long Up waits for each stage (etcd, agents,
	// all-pairs reachability); default [DefaultReadyTimeout].
	ReadyTimeout time.Duration `json:"ready_timeout,omitempty"`
	// SkipReachability makes Up return once the pods exist, without
	// waiting for every pod to reach every other.
	SkipReachability bool `json:"skip_reachability,omitempty"`
	// Attacher connects pods to their host; nil means [CNIAttacher] when
	// the weft plugin sits next to weftd or weftctl (or on $PATH), else
	// [BridgeAttacher].
	// It is not saved in lab.json: Load uses the bridge attacher's name
	// only for reporting.
	Attacher PodAttacher `json:"-"`
}

// normalize fills defaults and validates the spec. Every error names the
// field at fault.
func (s *Spec) normalize() error {
	if !nameRE.MatchString(s.Name) {
		return fmt.Errorf("lab: name %q: want 1-16 lower-case letters and digits, starting with a letter", s.Name)
	}
	if s.Hosts < 1 || s.Hosts > MaxHosts {
		return fmt.Errorf("lab: hosts: %d out of range 1..%d", s.Hosts, MaxHosts)
	}
	if s.Pods < 0 || s.Pods > MaxPods {
		return fmt.Errorf("lab: pods: %d out of range 0..%d", s.Pods, MaxPods)
	}
	if s.Network == "" {
		s.Network = DefaultNetwork
	}
	p, err := netip.ParsePrefix(s.Network)
	if err != nil || !p.Addr().Is4() {
		return fmt.Errorf("lab: network %q: want an IPv4 prefix such as %s", s.Network, DefaultNetwork)
	}
	if s.ResyncPeriod == 0 {
		s.ResyncPeriod = DefaultResyncPeriod
	}
	if s.ResyncPeriod < 0 {
		return fmt.Errorf("lab: resync period %s is negative", s.ResyncPeriod)
	}
	if s.ReadyTimeout <= 0 {
		s.ReadyTimeout = DefaultReadyTimeout
	}
	if s.UnderlayMTU == 0 {
		s.UnderlayMTU = 1500
	}
	if s.UnderlayMTU < 576 || s.UnderlayMTU > 65535 {
		return fmt.Errorf("lab: underlay MTU %d out of range 576..65535", s.UnderlayMTU)
	}
	switch s.UnderlayNeighbours {
	case "", "auto":
		s.UnderlayNeighbours = "arp"
		if s.arpEntries() > neighbourBudget() {
			s.UnderlayNeighbours = "static"
		}
	case "arp", "static":
	default:
		return fmt.Errorf("lab: underlay neighbours %q: want auto, arp or static", s.UnderlayNeighbours)
	}
	for h := range s.HostArgs {
		if h < 1 || h > s.Hosts {
			return fmt.Errorf("lab: host args: host %d does not exist (hosts are 1..%d)", h, s.Hosts)
		}
	}
	for h, seg := range s.Segments {
		if h < 1 || h > s.Hosts {
			return fmt.Errorf("lab: segments: host %d does not exist (hosts are 1..%d)", h, s.Hosts)
		}
		if seg != 0 && seg != 1 {
			return fmt.Errorf("lab: segments: host %d: segment %d (want 0 or 1)", h, seg)
		}
	}
	be, err := backendObject(s.Backend, s.BackendConfig)
	if err != nil {
		return err
	}
	s.BackendConfig = be
	return nil
}

// backendObject merges the backend type into the Backend object.
func backendObject(typ string, raw json.RawMessage) (json.RawMessage, error) {
	obj := map[string]json.RawMessage{}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
			return nil, fmt.Errorf("lab: backend config: must be a JSON object: %s", raw)
		}
	}
	var have string
	if t, ok := obj["Type"]; ok {
		if err := json.Unmarshal(t, &have); err != nil {
			return nil, fmt.Errorf("lab: backend config: Type must be a string")
		}
	}
	switch {
	case typ == "" && have == "":
		return nil, fmt.Errorf("lab: backend: missing (e.g. host-gw, vxlan, udp)")
	case typ != "" && have != "" && typ != have:
		return nil, fmt.Errorf("lab: backend config: Type %q disagrees with backend %q", have, typ)
	case typ == "":
		typ = have
	}
	t, _ := json.Marshal(typ)
	obj["Type"] = t
	out, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("lab: backend config: %w", err)
	}
	return out, nil
}

// segment returns host i's underlay segment.
func (s *Spec) segment(i int) int { return s.Segments[i] }

// underlayIP returns host i's underlay address.
func (s *Spec) underlayIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(s.segment(i)), byte(10 + i)})
}

// networkConfig is the JSON written to <prefix>/config.
func (s *Spec) networkConfig() []byte {
	cfg := struct {
		Network string
		Backend json.RawMessage
	}{s.Network, s.BackendConfig}
	b, _ := json.Marshal(cfg) // cannot fail: a string and valid raw JSON
	return b
}

// arpEntries estimates the dynamic neighbour entries the lab needs when
// its underlay uses ARP: every host resolves every other host and the
// etcd, the etcd resolves every host, and each pod and its host resolve
// each other.
func (s *Spec) arpEntries() int {
	return s.Hosts*(s.Hosts-1) + 2*s.Hosts + 2*s.Hosts*s.Pods
}

// neighbourBudget is how many dynamic neighbour entries a lab may use:
// half of gc_thresh2, above which the kernel starts evicting entries that
// are in use, so that other labs and tests on the machine keep room too.
func neighbourBudget() int {
	const fallback = 512 // the kernel's default gc_thresh2
	b, err := os.ReadFile("/proc/sys/net/ipv4/neigh/default/gc_thresh2")
	if err != nil {
		return fallback / 2
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= 0 {
		return fallback / 2
	}
	return n / 2
}
