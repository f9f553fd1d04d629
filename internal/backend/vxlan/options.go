package vxlan

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
)

// Defaults, as flannel's.
const (
	// DefaultVNI is the VXLAN network identifier used when VNI is not set.
	DefaultVNI = 1
	// DefaultPort is the UDP port VXLAN packets are sent to (the Linux
	// kernel's default, not IANA's 4789).
	DefaultPort = 8472
	// Overhead is what VXLAN encapsulation adds to a packet over IPv4:
	// outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
	Overhead = 50
	// DefaultBridge is the pod bridge the fast path attaches to when
	// Bridge is not set (the CNI plugin's bridge).
	DefaultBridge = "cni0"
)

// Mode says how peers' entries are programmed.
type Mode string

// The modes.
const (
	// ModeStatic programs a route, neighbour and FDB entry for every peer.
	ModeStatic Mode = "static"
	// ModeReactive programs one route for the overlay and answers the
	// kernel's L2/L3 misses on demand.
	ModeReactive Mode = "reactive"
)

// Checksum offload settings (option TxChecksumOffload).
const (
	csumAuto = "auto"
	csumOn   = "on"
	csumOff  = "off"
)

// Options are the keys of the network config's Backend object. VNI, Port,
// GBP, Learning, DirectRouting, MTU and MacPrefix are flannel's; Mode,
// DeviceName, TxChecksumOffload, FastPath and Bridge are Weft's.
type Options struct {
	// VNI is the VXLAN network identifier (default 1).
	VNI *int
	// Port is the UDP destination port (default 8472).
	Port int
	// GBP turns on the VXLAN Group Based Policy extension.
	GBP bool
	// Learning turns on source-address learning on the device (off by
	// default; Weft programs the FDB itself).
	Learning bool
	// DirectRouting routes peers on the same underlay subnet without
	// encapsulation, as host-gw does.
	DirectRouting bool
	// MTU of the device; 0 means the underlay MTU minus 50.
	MTU int
	// MacPrefix, "XX:XX", fixes the first two bytes of a derived VtepMAC.
	MacPrefix string
	// Mode is "static" (default) or "reactive".
	Mode string
	// DeviceName names the device (default "flannel.<VNI>").
	DeviceName string
	// TxChecksumOffload is "auto" (default: off only on kernels that
	// corrupt NATed VXLAN checksums), "on" or "off".
	TxChecksumOffload string
	// FastPath attaches a tc eBPF program to every pod veth on Bridge that
	// sends IPv4 packets for other hosts' pods straight to the VXLAN
	// device (bpf_redirect_neigh), skipping the bridge, IP forwarding and
	// netfilter (off by default; static mode without DirectRouting only).
	FastPath bool
	// Bridge is the pod bridge whose veths get the fast path (default
	// "cni0", the CNI plugin's).
	Bridge string
}

// settings are the validated options with defaults filled in.
type settings struct {
	vni           int
	port          int
	gbp           bool
	learning      bool
	directRouting bool
	mtu           int
	macPrefix     net.HardwareAddr
	mode          Mode
	device        string
	csum          string
	fastPath      bool
	bridge        string
}

func fieldErr(field, format string, args ...any) error {
	return &config.FieldError{Field: "Backend." + field, Msg: fmt.Sprintf(format, args...)}
}

// parseOptions decodes and validates the raw Backend object.
func parseOptions(raw json.RawMessage) (settings, error) {
	var o Options
	if err := backend.DecodeOptions(raw, &o); err != nil {
		return settings{}, err
	}
	s := settings{
		vni:           DefaultVNI,
		port:          DefaultPort,
		gbp:           o.GBP,
		learning:      o.Learning,
		directRouting: o.DirectRouting,
		mtu:           o.MTU,
		mode:          ModeStatic,
		csum:          csumAuto,
		fastPath:      o.FastPath,
		bridge:        DefaultBridge,
	}
	if o.VNI != nil {
		if *o.VNI < 0 || *o.VNI > 1<<24-1 {
			return s, fieldErr("VNI", "%d is out of range 0-16777215", *o.VNI)
		}
		s.vni = *o.VNI
	}
	if o.Port != 0 {
		if o.Port < 1 || o.Port > 65535 {
			return s, fieldErr("Port", "%d is out of range 1-65535", o.Port)
		}
		s.port = o.Port
	}
	if o.MTU != 0 && (o.MTU < 576 || o.MTU > 65535) {
		return s, fieldErr("MTU", "%d is out of range 576-65535 (0 means underlay MTU - %d)", o.MTU, Overhead)
	}
	if o.MacPrefix != "" {
		hw, err := net.ParseMAC(o.MacPrefix + ":00:00:00:00")
		if err != nil || len(hw) != 6 {
			return s, fieldErr("MacPrefix", "%q is not two hex bytes such as \"0E:2A\"", o.MacPrefix)
		}
		if hw[0]&1 != 0 {
			return s, fieldErr("MacPrefix", "%q is a multicast prefix (lowest bit of the first byte set)", o.MacPrefix)
		}
		s.macPrefix = hw[:2]
	}
	switch m := Mode(strings.ToLower(o.Mode)); m {
	case "", ModeStatic:
	case ModeReactive:
		s.mode = ModeReactive
	default:
		return s, fieldErr("Mode", "%q is not one of \"static\", \"reactive\"", o.Mode)
	}
	s.device = fmt.Sprintf("flannel.%d", s.vni)
	if o.DeviceName != "" {
		if err := checkIfName(o.DeviceName); err != nil {
			return s, fieldErr("DeviceName", "%v", err)
		}
		s.device = o.DeviceName
	}
	switch c := strings.ToLower(o.TxChecksumOffload); c {
	case "", csumAuto:
	case csumOn, csumOff:
		s.csum = c
	default:
		return s, fieldErr("TxChecksumOffload", "%q is not one of \"auto\", \"on\", \"off\"", o.TxChecksumOffload)
	}
	if o.Bridge != "" {
		if err := checkIfName(o.Bridge); err != nil {
			return s, fieldErr("Bridge", "%v", err)
		}
		s.bridge = o.Bridge
	}
	if s.fastPath && s.mode != ModeStatic {
		return s, fieldErr("FastPath", "works in static mode only (Mode is %q)", o.Mode)
	}
	if s.fastPath && s.directRouting {
		return s, fieldErr("FastPath", "cannot be combined with DirectRouting (the program sends every remote pod's packets to the VXLAN device)")
	}
	return s, nil
}

// checkIfName applies the kernel's rules for interface names.
func checkIfName(name string) error {
	if len(name) > 15 {
		return fmt.Errorf("%q is longer than 15 bytes", name)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("%q is not a valid interface name", name)
	}
	for _, r := range name {
		if r == '/' || r == ':' || r <= ' ' || r > '~' {
			return fmt.Errorf("%q contains %q, not allowed in interface names", name, r)
		}
	}
	return nil
}

func validate(raw json.RawMessage) error {
	_, err := parseOptions(raw)
	return err
}
