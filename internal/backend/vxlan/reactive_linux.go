package vxlan

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/weft-net/weft/internal/netnsutil"
	"golang.org/x/sys/unix"
)

// neighSysctls route the kernel's neighbour resolution on the device to
// Weft: no unicast or broadcast ARP (nobody across the tunnel would answer),
// three application probes (RTM_GETNEIGH to user space) instead. These also
// cover re-confirmation of entries in use, so an active flow never loses
// its neighbour.
var neighSysctls = [][2]string{
	{"ucast_solicit", "0"},
	{"mcast_solicit", "0"},
	{"mcast_resolicit", "0"},
	{"app_solicit", "3"},
}

// ensureNeighSysctls writes neighSysctls for the device in the host's
// namespace (procfs resolves /proc/sys/net in the opener's namespace).
func (b *Backend) ensureNeighSysctls() error {
	return netnsutil.Do(b.host.NetNS, func() error {
		dir := filepath.Join("/proc/sys/net/ipv4/neigh", b.s.device)
		for _, kv := range neighSysctls {
			p := filepath.Join(dir, kv[0])
			if _, err := os.Stat(p); err != nil && kv[0] == "mcast_resolicit" {
				continue // older kernels
			}
			if err := os.WriteFile(p, []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("reactive mode: set %s: %w", p, err)
			}
		}
		return nil
	})
}

// newHandle opens a netlink handle in the host's namespace.
func (b *Backend) newHandle() (*netlink.Handle, error) {
	if b.host.NetNS.IsOpen() {
		return netlink.NewHandleAt(b.host.NetNS)
	}
	return netlink.NewHandle()
}

// startMisses subscribes to neighbour notifications and answers misses
// until ctx is done.
func (b *Backend) startMisses(ctx context.Context) error {
	h, err := b.newHandle()
	if err != nil {
		return fmt.Errorf("reactive mode: netlink handle: %w", err)
	}
	ch, done, err := b.subscribe()
	if err != nil {
		h.Close()
		return err
	}
	go b.routineMisses(ctx, h, ch, done)
	return nil
}

func (b *Backend) subscribe() (chan netlink.NeighUpdate, chan struct{}, error) {
	ch := make(chan netlink.NeighUpdate, 4096)
	done := make(chan struct{})
	opts := netlink.NeighSubscribeOptions{
		ErrorCallback:     func(err error) { b.log.Warn("neighbour subscription", "error", err) },
		ReceiveBufferSize: 4 << 20,
	}
	if b.host.NetNS.IsOpen() {
		ns := b.host.NetNS
		opts.Namespace = &ns
	}
	if err := netlink.NeighSubscribeWithOptions(ch, done, opts); err != nil {
		return nil, nil, fmt.Errorf("reactive mode: subscribe to neighbour events: %w", err)
	}
	return ch, done, nil
}

// routineMisses owns h and the subscription; it resubscribes when the
// kernel drops the subscription (e.g. a receive buffer overrun).
func (b *Backend) routineMisses(ctx context.Context, h *netlink.Handle, ch chan netlink.NeighUpdate, done chan struct{}) {
	defer h.Close()
	for {
		select {
		case <-ctx.Done():
			close(done)
			for range ch {
			}
			return
		case u, ok := <-ch:
			if ok {
				b.answerMiss(h, u)
				continue
			}
		}
		close(done)
		b.log.Warn("neighbour subscription ended; resubscribing")
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		var err error
		if ch, done, err = b.subscribe(); err != nil {
			b.log.Error("resubscribe failed; reactive mode stopped answering", "error", err)
			return
		}
	}
}

// answerMiss answers one kernel request. An L3 miss or application probe
// (an IPv4 address without a link-layer address) gets an FDB entry and then
// a neighbour entry; an L2 miss (a MAC without a destination) gets the FDB
// entry. Both are NUD_REACHABLE so they age out when unused.
func (b *Backend) answerMiss(h *netlink.Handle, u netlink.NeighUpdate) {
	if u.Type != unix.RTM_GETNEIGH {
		return
	}
	idx := int(b.linkIndex.Load())
	if u.LinkIndex != idx {
		return
	}
	t := b.table.Load()
	if t == nil {
		return // no Reconcile yet: no peers known
	}
	if ip := ipOf(u.IP); ip.IsValid() && !ip.IsUnspecified() {
		p := t.lookupIP(ip)
		if p == nil || p.direct {
			b.log.Debug("L3 miss for an address of no tunnel peer", "ip", ip)
			return
		}
		if err := h.NeighSet(fdbEntry(idx, p.mac, p.public, netlink.NUD_REACHABLE)); err != nil {
			b.log.Warn("answer L3 miss: FDB entry", "ip", ip, "mac", p.mac.String(), "dst", p.public, "error", err)
			return
		}
		if err := h.NeighSet(neighEntry(idx, ip, p.mac, netlink.NUD_REACHABLE)); err != nil {
			b.log.Warn("answer L3 miss: neighbour", "ip", ip, "mac", p.mac.String(), "error", err)
			return
		}
		b.log.Debug("answered L3 miss", "ip", ip, "mac", p.mac.String(), "dst", p.public)
		return
	}
	m, err := toHwAddr(u.HardwareAddr)
	if err != nil {
		return
	}
	p := t.byMAC[m]
	if p == nil {
		b.log.Debug("L2 miss for a MAC of no peer", "mac", m.String())
		return
	}
	if err := h.NeighSet(fdbEntry(idx, p.mac, p.public, netlink.NUD_REACHABLE)); err != nil {
		b.log.Warn("answer L2 miss: FDB entry", "mac", m.String(), "dst", p.public, "error", err)
		return
	}
	b.log.Debug("answered L2 miss", "mac", m.String(), "dst", p.public)
}
