// Package subnetenv reads and writes subnet.env, the file through which
// weftd tells the host (the CNI plugin, Docker) its subnet. The variable
// names are flannel's, so tools written for flannel read Weft's file.
package subnetenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultPath is where flannel and weftd write the file.
const DefaultPath = "/run/flannel/subnet.env"

// ErrNotReady is returned by Read when the file does not exist yet: weftd
// has not leased a subnet on this host.
var ErrNotReady = errors.New("subnet.env does not exist yet: weftd has not leased a subnet on this host (is weftd running?)")

// Env is the content of subnet.env.
type Env struct {
	// Network is the whole overlay network (FLANNEL_NETWORK).
	Network netip.Prefix
	// Subnet is the host's subnet with the host's gateway address, the
	// subnet's first address (FLANNEL_SUBNET, e.g. 10.244.7.1/24).
	Subnet netip.Prefix
	// MTU is the MTU pods should use (FLANNEL_MTU).
	MTU int
	// IPMasq reports whether weftd masquerades pod egress (FLANNEL_IPMASQ).
	IPMasq bool
}

// Gateway returns the host's address in its subnet (the bridge address).
func (e Env) Gateway() netip.Addr { return e.Subnet.Addr() }

// HostSubnet returns the host's subnet as a network prefix (10.244.7.0/24).
func (e Env) HostSubnet() netip.Prefix { return e.Subnet.Masked() }

// Format renders the file's content.
func (e Env) Format() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network)
	fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", e.Subnet)
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", e.IPMasq)
	return b.Bytes()
}

// New builds the Env for a host subnet: the gateway is the subnet's first
// address.
func New(network, hostSubnet netip.Prefix, mtu int, ipMasq bool) Env {
	return Env{Network: network, Subnet: netip.PrefixFrom(hostSubnet.Masked().Addr().Next(), hostSubnet.Bits()), MTU: mtu, IPMasq: ipMasq}
}

// Write replaces path atomically (write to a temporary file, fsync, rename),
// creating its directory if needed.
func Write(path string, e Env) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("subnet.env: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("subnet.env: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(e.Format()); err != nil {
		tmp.Close()
		return fmt.Errorf("subnet.env: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("subnet.env: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("subnet.env: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("subnet.env: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("subnet.env: %w", err)
	}
	return nil
}

// Read parses path. A missing file yields an error wrapping [ErrNotReady].
func Read(path string) (Env, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Env{}, fmt.Errorf("%s: %w", path, ErrNotReady)
	}
	if err != nil {
		return Env{}, fmt.Errorf("subnet.env: %w", err)
	}
	e, err := Parse(data)
	if err != nil {
		return Env{}, fmt.Errorf("%s: %w", path, err)
	}
	return e, nil
}

// Parse decodes the file's content. Unknown variables are ignored (flannel
// writes IPv6 ones too); FLANNEL_SUBNET is required.
func Parse(data []byte) (Env, error) {
	var e Env
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		k, v, ok := strings.Cut(text, "=")
		if !ok {
			return Env{}, fmt.Errorf("line %d: want NAME=value, got %q", line, text)
		}
		var err error
		switch k {
		case "FLANNEL_NETWORK":
			e.Network, err = netip.ParsePrefix(v)
		case "FLANNEL_SUBNET":
			e.Subnet, err = netip.ParsePrefix(v)
		case "FLANNEL_MTU":
			e.MTU, err = strconv.Atoi(v)
			if err == nil && (e.MTU < 68 || e.MTU > 65535) {
				err = fmt.Errorf("MTU %d out of range 68..65535", e.MTU)
			}
		case "FLANNEL_IPMASQ":
			e.IPMasq, err = strconv.ParseBool(v)
		}
		if err != nil {
			return Env{}, fmt.Errorf("line %d: %s: %w", line, k, err)
		}
	}
	if err := sc.Err(); err != nil {
		return Env{}, err
	}
	if !e.Subnet.IsValid() {
		return Env{}, errors.New("FLANNEL_SUBNET is missing")
	}
	return e, nil
}
