package vxlan

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// macFile is where the VtepMAC of a device is kept in the state directory.
func macFile(stateDir, device string) string {
	return filepath.Join(stateDir, device+".vtep-mac")
}

// deriveMAC computes a stable, locally administered unicast MAC from the
// host's identity on the overlay: its public address and the VNI. Two hosts
// cannot share a public address on one VXLAN network, so the MAC is unique
// there, and the same host gets it back even with its state lost.
func deriveMAC(public netip.Addr, vni int, prefix net.HardwareAddr) hwAddr {
	h := sha256.New()
	h.Write([]byte("weft vxlan vtep mac\x00"))
	b, _ := public.MarshalBinary()
	h.Write(b)
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], uint32(vni))
	h.Write(v[:])
	sum := h.Sum(nil)
	var m hwAddr
	copy(m[:], sum)
	m[0] = m[0]&^1 | 2 // unicast, locally administered
	if len(prefix) == 2 {
		m[0], m[1] = prefix[0], prefix[1]
	}
	if m.isZero() {
		m[5] = 1
	}
	return m
}

// loadMAC reads a persisted VtepMAC; ok is false when there is none.
func loadMAC(path string) (m hwAddr, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return m, false, fmt.Errorf("read VtepMAC: %w", err)
	}
	m, err = parseHwAddr(strings.TrimSpace(string(b)))
	if err != nil {
		return m, false, fmt.Errorf("VtepMAC in %s: %w", path, err)
	}
	return m, true, nil
}

// saveMAC persists the VtepMAC atomically (write, sync, rename).
func saveMAC(path string, m hwAddr) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("save VtepMAC: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".vtep-mac-*")
	if err != nil {
		return fmt.Errorf("save VtepMAC: %w", err)
	}
	_, werr := tmp.WriteString(m.String() + "\n")
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save VtepMAC: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save VtepMAC: %w", err)
	}
	return nil
}
