package cni

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The on-disk layout is host-local's, so that the two can share a directory
// (a node switched from flannel keeps its pods' reservations, and both take
// the same lock): <dataDir>/<network>/<address> holds "<containerID>\r\n<ifname>",
// <dir>/last_reserved_ip.0 the last address handed out (allocation goes
// round-robin so a released address is not reused at once), <dir>/lock is
// the flock(2) that serialises every change.
const (
	lastReservedFile = "last_reserved_ip.0"
	lockFile         = "lock"
	ownerSep         = "\r\n"
)

// ErrPoolExhausted is returned by [Store.Allocate] when every address of the
// host's subnet is taken.
var ErrPoolExhausted = errors.New("no free address left in the host's subnet")

// Store keeps one network's address allocations on disk.
type Store struct {
	dir  string
	lock *os.File
}

// Allocation is one address held by an attachment.
type Allocation struct {
	// Addr is the address held.
	Addr netip.Addr
	// ContainerID and IfName name the attachment holding it. IfName is
	// empty in files written by old host-local versions.
	ContainerID, IfName string
}

// OpenStore opens (creating if needed) the allocation directory of network
// under dataDir.
func OpenStore(dataDir, network string) (*Store, error) {
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("allocation store: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("allocation store: %w", err)
	}
	return &Store{dir: dir, lock: f}, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Close releases the store's lock file.
func (s *Store) Close() error { return s.lock.Close() }

// Locked runs fn while holding the store's exclusive lock, which other weft
// and host-local processes honour too.
func (s *Store) Locked(fn func() error) error {
	for {
		err := unix.Flock(int(s.lock.Fd()), unix.LOCK_EX)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("allocation store: lock %s: %w", s.lock.Name(), err)
		}
	}
	ferr := fn()
	if err := unix.Flock(int(s.lock.Fd()), unix.LOCK_UN); err != nil {
		return errors.Join(ferr, fmt.Errorf("allocation store: unlock: %w", err))
	}
	return ferr
}

// Pool is the set of addresses pods of this host may get: the host subnet
// without its network address, broadcast address and gateway.
type Pool struct {
	Subnet  netip.Prefix // the host subnet, 10.244.7.0/24
	Gateway netip.Addr   // the bridge's address, excluded
}

func (p Pool) first() netip.Addr { return p.Subnet.Masked().Addr().Next() }

func (p Pool) last() netip.Addr {
	a := p.Subnet.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Subnet.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).Prev()
}

// Contains reports whether a may be handed to a pod.
func (p Pool) Contains(a netip.Addr) bool {
	return a.Is4() && p.Subnet.Contains(a) && a != p.Gateway &&
		!a.Less(p.first()) && !p.last().Less(a)
}

func (p Pool) valid() error {
	if !p.Subnet.Addr().Is4() || p.Subnet.Bits() > 30 {
		return fmt.Errorf("host subnet %s is not an IPv4 subnet of /30 or larger", p.Subnet)
	}
	return nil
}

// Allocate returns the address held by (id, ifname) in pool, or reserves the
// next free one after the last handed out. Call it under [Store.Locked].
func (s *Store) Allocate(id, ifname string, pool Pool) (netip.Addr, error) {
	if err := pool.valid(); err != nil {
		return netip.Addr{}, err
	}
	all, err := s.List()
	if err != nil {
		return netip.Addr{}, err
	}
	taken := make(map[netip.Addr]bool, len(all))
	for _, a := range all {
		if a.ContainerID == id && (a.IfName == ifname || a.IfName == "") && pool.Contains(a.Addr) {
			return a.Addr, nil
		}
		taken[a.Addr] = true
	}
	start := pool.first()
	if b, err := os.ReadFile(filepath.Join(s.dir, lastReservedFile)); err == nil {
		if last, err := netip.ParseAddr(strings.TrimSpace(string(b))); err == nil && pool.Contains(last) {
			start = last.Next()
		}
	}
	a := start
	last := pool.last()
	for range 1<<(32-pool.Subnet.Bits()) + 1 {
		if !pool.Subnet.Contains(a) || last.Less(a) || a.Less(pool.first()) {
			a = pool.first() // wrap around
		}
		if pool.Contains(a) && !taken[a] {
			ok, err := s.reserve(a, id, ifname)
			if err != nil {
				return netip.Addr{}, err
			}
			if ok {
				return a, nil
			}
		}
		a = a.Next()
	}
	return netip.Addr{}, fmt.Errorf("%w: all %s addresses are in use (see %s)", ErrPoolExhausted, pool.Subnet, s.dir)
}

func (s *Store) reserve(a netip.Addr, id, ifname string) (bool, error) {
	f, err := os.OpenFile(filepath.Join(s.dir, a.String()), os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("allocation store: %w", err)
	}
	_, werr := f.WriteString(strings.TrimSpace(id) + ownerSep + ifname)
	if err := errors.Join(werr, f.Close()); err != nil {
		os.Remove(f.Name())
		return false, fmt.Errorf("allocation store: %w", err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, lastReservedFile), []byte(a.String()), 0o600); err != nil {
		return false, fmt.Errorf("allocation store: %w", err)
	}
	return true, nil
}

// List returns every allocation in the store. Files it cannot read or parse
// are skipped: they are not allocations (host-local keeps other files here).
func (s *Store) List() ([]Allocation, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("allocation store: %w", err)
	}
	out := make([]Allocation, 0, len(ents))
	for _, e := range ents {
		a, err := netip.ParseAddr(e.Name())
		if err != nil || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if err != nil {
			continue
		}
		id, ifname, _ := strings.Cut(strings.TrimSpace(string(b)), ownerSep)
		out = append(out, Allocation{Addr: a, ContainerID: strings.TrimSpace(id), IfName: strings.TrimSpace(ifname)})
	}
	return out, nil
}

// Release frees the addresses held by (id, ifname) (and, as host-local does,
// by id alone in files that name no interface) and returns them. Releasing
// nothing is not an error. Call it under [Store.Locked].
func (s *Store) Release(id, ifname string) ([]netip.Addr, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	var freed []netip.Addr
	var errs []error
	for _, a := range all {
		if a.ContainerID != id || (a.IfName != ifname && a.IfName != "") {
			continue
		}
		if err := s.remove(a.Addr); err != nil {
			errs = append(errs, err)
			continue
		}
		freed = append(freed, a.Addr)
	}
	return freed, errors.Join(errs...)
}

// Retain frees every allocation whose attachment keep does not report as
// valid, and returns what it freed. Call it under [Store.Locked].
func (s *Store) Retain(keep func(id, ifname string) bool) ([]Allocation, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	var freed []Allocation
	var errs []error
	for _, a := range all {
		if keep(a.ContainerID, a.IfName) {
			continue
		}
		if err := s.remove(a.Addr); err != nil {
			errs = append(errs, err)
			continue
		}
		freed = append(freed, a)
	}
	return freed, errors.Join(errs...)
}

func (s *Store) remove(a netip.Addr) error {
	if err := os.Remove(filepath.Join(s.dir, a.String())); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("allocation store: release %s: %w", a, err)
	}
	return nil
}
