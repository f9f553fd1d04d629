package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Defaults for the network configuration.
const (
	// DefaultBridge is the host bridge pods are attached to, as flannel's.
	DefaultBridge = "cni0"
	// DefaultDataDir is where allocations are kept: host-local's directory,
	// with host-local's file format, so that a node switched from flannel
	// (bridge + host-local) keeps the reservations of its running pods.
	DefaultDataDir = "/var/lib/cni/networks"
)

// NetConf is a validated network configuration for the weft plugin: the JSON
// document a runtime passes on stdin, with defaults filled in.
type NetConf struct {
	types.PluginConf

	// SubnetFile is the host's subnet.env (netconf "subnetFile").
	SubnetFile string
	// DataDir holds the allocations, one directory per network ("dataDir").
	DataDir string
	// Bridge is the host bridge's name ("bridge" or "delegate.bridge").
	Bridge string
	// MTU is the pods' MTU; 0 means subnet.env's FLANNEL_MTU ("mtu").
	MTU int
	// HairpinMode lets a pod reach itself through a service address
	// ("hairpinMode").
	HairpinMode bool
	// IsDefaultGateway gives pods a default route via the bridge; when
	// false they get a route for the overlay network only
	// ("isDefaultGateway", default true).
	IsDefaultGateway bool
	// IPMasq asks the plugin to make sure pod egress is masqueraded. nil
	// means "unless weftd does it" (subnet.env's FLANNEL_IPMASQ), as flannel.
	IPMasq *bool
	// HasAttachments reports whether the configuration carries the list of
	// valid attachments (cni.dev/valid-attachments, or the older
	// cni.dev/attachments), merged into ValidAttachments; GC needs it.
	HasAttachments bool
}

// rawConf mirrors the JSON document. Options are pointers so that "absent"
// and "false/0" differ; flannel conflists carry bridge options in delegate.
type rawConf struct {
	types.PluginConf
	SubnetFile       *string      `json:"subnetFile"`
	DataDir          *string      `json:"dataDir"`
	IPMasq           *bool        `json:"ipMasq"`
	Bridge           *string      `json:"bridge"`
	MTU              *int         `json:"mtu"`
	HairpinMode      *bool        `json:"hairpinMode"`
	IsDefaultGateway *bool        `json:"isDefaultGateway"`
	Delegate         *rawDelegate `json:"delegate"`
	// OldAttachments is the GC key of the CNI 1.1 spec's first text,
	// which libcni still sends next to cni.dev/valid-attachments.
	OldAttachments []types.GCAttachment `json:"cni.dev/attachments"`
}

// rawDelegate is flannel's "delegate" object: the options flannel passed on
// to the bridge plugin. Weft is the bridge, so it reads them itself.
type rawDelegate struct {
	Type             *string         `json:"type"`
	Bridge           *string         `json:"bridge"`
	MTU              *int            `json:"mtu"`
	HairpinMode      *bool           `json:"hairpinMode"`
	IsDefaultGateway *bool           `json:"isDefaultGateway"`
	IsGateway        *bool           `json:"isGateway"`
	IPMasq           *bool           `json:"ipMasq"`
	IPAM             json.RawMessage `json:"ipam"`
}

// ParseNetConf decodes and validates the configuration read from stdin. Its
// errors are CNI errors (*types.Error) whose message names the field.
func ParseNetConf(data []byte) (*NetConf, error) {
	var raw rawConf
	if err := json.Unmarshal(data, &raw); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, fieldErr(types.ErrInvalidNetworkConfig, te.Field, "must be a JSON %s, not %s", jsonKind(te), te.Value)
		}
		return nil, types.NewError(types.ErrDecodingFailure, "network configuration is not valid JSON: "+err.Error(), "")
	}
	c := &NetConf{
		PluginConf:       raw.PluginConf,
		SubnetFile:       "/run/flannel/subnet.env",
		DataDir:          DefaultDataDir,
		Bridge:           DefaultBridge,
		IsDefaultGateway: true,
		IPMasq:           raw.IPMasq,
	}
	c.HasAttachments = raw.ValidAttachments != nil || raw.OldAttachments != nil
	c.ValidAttachments = append(c.ValidAttachments, raw.OldAttachments...)
	if c.Name == "" {
		return nil, fieldErr(types.ErrInvalidNetworkConfig, "name", "is required")
	}
	if strings.ContainsAny(c.Name, "/\x00") || c.Name == "." || c.Name == ".." {
		return nil, fieldErr(types.ErrInvalidNetworkConfig, "name", "%q cannot name a directory", c.Name)
	}
	if raw.IPAM.Type != "" {
		return nil, fieldErr(types.ErrUnsupportedField, "ipam", "weft allocates addresses from the host's subnet itself; remove the ipam section")
	}
	if raw.SubnetFile != nil {
		if *raw.SubnetFile == "" {
			return nil, fieldErr(types.ErrInvalidNetworkConfig, "subnetFile", "must not be empty (default /run/flannel/subnet.env)")
		}
		c.SubnetFile = *raw.SubnetFile
	}
	if raw.DataDir != nil {
		if !filepath.IsAbs(*raw.DataDir) {
			return nil, fieldErr(types.ErrInvalidNetworkConfig, "dataDir", "%q must be an absolute path", *raw.DataDir)
		}
		c.DataDir = filepath.Clean(*raw.DataDir)
	}
	d := raw.Delegate
	if d == nil {
		d = &rawDelegate{}
	}
	if d.Type != nil && *d.Type != "bridge" {
		return nil, fieldErr(types.ErrUnsupportedField, "delegate.type", "%q is not supported: weft attaches pods to a bridge itself (remove delegate.type or set it to \"bridge\")", *d.Type)
	}
	if len(bytes.TrimSpace(d.IPAM)) > 0 && string(bytes.TrimSpace(d.IPAM)) != "null" {
		return nil, fieldErr(types.ErrUnsupportedField, "delegate.ipam", "weft allocates addresses from the host's subnet itself; remove delegate.ipam")
	}
	if d.IsGateway != nil && !*d.IsGateway {
		return nil, fieldErr(types.ErrUnsupportedField, "delegate.isGateway", "false is not supported: the bridge is always the pods' gateway")
	}
	var err error
	bridge, err := pick("bridge", raw.Bridge, d.Bridge)
	if err != nil {
		return nil, err
	}
	if bridge != nil {
		if err := checkIfName(*bridge); err != nil {
			return nil, fieldErr(types.ErrInvalidNetworkConfig, whichField("bridge", raw.Bridge), "%q %v", *bridge, err)
		}
		c.Bridge = *bridge
	}
	mtu, err := pick("mtu", raw.MTU, d.MTU)
	if err != nil {
		return nil, err
	}
	if mtu != nil {
		if *mtu < 68 || *mtu > 65535 {
			return nil, fieldErr(types.ErrInvalidNetworkConfig, whichField("mtu", raw.MTU), "%d is out of range 68..65535", *mtu)
		}
		c.MTU = *mtu
	}
	if v, err := pick("hairpinMode", raw.HairpinMode, d.HairpinMode); err != nil {
		return nil, err
	} else if v != nil {
		c.HairpinMode = *v
	}
	if v, err := pick("isDefaultGateway", raw.IsDefaultGateway, d.IsDefaultGateway); err != nil {
		return nil, err
	} else if v != nil {
		c.IsDefaultGateway = *v
	}
	if c.IPMasq, err = pick("ipMasq", raw.IPMasq, d.IPMasq); err != nil {
		return nil, err
	}
	return c, nil
}

// pick returns the option set at the top level or in delegate; setting both
// to different values is an error naming the delegate's field.
func pick[T comparable](name string, top, delegate *T) (*T, error) {
	switch {
	case top == nil:
		return delegate, nil
	case delegate == nil:
		return top, nil
	case *top != *delegate:
		return nil, fieldErr(types.ErrInvalidNetworkConfig, "delegate."+name, "%v conflicts with %s %v at the top level; set it once", *delegate, name, *top)
	}
	return top, nil
}

func whichField[T any](name string, top *T) string {
	if top != nil {
		return name
	}
	return "delegate." + name
}

// checkIfName applies the kernel's rules for interface names.
func checkIfName(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > 15:
		return errors.New("is longer than 15 bytes")
	case s == "." || s == "..":
		return errors.New("is not a valid interface name")
	case strings.ContainsAny(s, "/: \t\n\x00"):
		return errors.New("contains '/', ':', a space or a control character")
	}
	return nil
}

func jsonKind(te *json.UnmarshalTypeError) string {
	if te.Type == nil {
		return "value"
	}
	t := te.Type
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return jsonKindName(t.Kind())
}

func jsonKindName(k reflect.Kind) string {
	switch k {
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint32, reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean (true or false)"
	case reflect.Struct, reflect.Map:
		return "object"
	case reflect.Slice:
		return "array"
	}
	return k.String()
}

// fieldErr builds a CNI error whose message names the netconf field.
func fieldErr(code uint, field, format string, args ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf("network configuration field %q: %s", field, fmt.Sprintf(format, args...)), "")
}
