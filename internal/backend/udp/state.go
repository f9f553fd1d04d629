package udp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/weft-net/weft/internal/lease"
)

// stateFile is the file in Host.StateDir where the backend remembers the
// peers it last served, so that a restarted weftd forwards again as soon as
// it has attached to the TUN device, before it has talked to etcd about its
// lease and its peers.
const stateFile = "peers.json"

// savedState is the content of stateFile.
type savedState struct {
	// Network is the overlay network the peers belong to; a state saved
	// for another network is ignored.
	Network netip.Prefix `json:"network"`
	// Own is this host's subnet when the state was saved.
	Own netip.Prefix `json:"own"`
	// Port is the backend's UDP port.
	Port int `json:"port"`
	// Peers are the peers served.
	Peers []savedPeer `json:"peers"`
}

type savedPeer struct {
	Subnet   netip.Prefix `json:"subnet"`
	PublicIP netip.Addr   `json:"public_ip"`
}

func (b *Backend) statePath() string {
	if b.host.StateDir == "" {
		return ""
	}
	return filepath.Join(b.host.StateDir, stateFile)
}

// encodeState renders the state for t, the table in use.
func (b *Backend) encodeState(t *table) ([]byte, error) {
	st := savedState{Network: b.host.Network.Network.Masked(), Own: t.own, Port: b.opts.Port, Peers: []savedPeer{}}
	for _, p := range t.peers {
		st.Peers = append(st.Peers, savedPeer{Subnet: p.subnet, PublicIP: p.publicIP})
	}
	return json.MarshalIndent(st, "", "  ")
}

// saveState writes the state for t if it differs from what was saved last
// (atomically: a crash leaves the old file or the new one).
func (b *Backend) saveState(t *table) error {
	path := b.statePath()
	if path == "" {
		return nil
	}
	data, err := b.encodeState(t)
	if err != nil {
		return err
	}
	if bytes.Equal(data, b.saved) {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("save peers: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save peers: %w", err)
	}
	b.saved = data
	return nil
}

// loadState reads the saved state. It returns nil without error when there
// is none; a state for another network or port, or one that does not parse,
// is reported and ignored: the packet path then waits for Reconcile.
func (b *Backend) loadState() (*savedState, error) {
	path := b.statePath()
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var st savedState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.Network != b.host.Network.Network.Masked() || st.Port != b.opts.Port {
		return nil, fmt.Errorf("%s: saved for network %s port %d, not %s port %d", path, st.Network, st.Port, b.host.Network.Network, b.opts.Port)
	}
	if !st.Own.IsValid() || !st.Own.Addr().Is4() {
		return nil, fmt.Errorf("%s: own subnet %s is not an IPv4 prefix", path, st.Own)
	}
	b.saved = data
	return &st, nil
}

// leases turns saved peers back into leases for buildTable, which checks
// them like any other.
func (st *savedState) leases() []lease.Lease {
	ls := make([]lease.Lease, 0, len(st.Peers))
	for _, p := range st.Peers {
		ls = append(ls, lease.Lease{Subnet: p.Subnet, Attrs: lease.Attrs{PublicIP: p.PublicIP}})
	}
	return ls
}
