package lab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/netnsutil"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// pinger sends ICMP echo requests from inside one namespace. The raw socket
// is opened on a thread inside the namespace and stays there; it is then
// used from any goroutine.
type pinger struct {
	conn *icmp.PacketConn
	id   int
	seq  int
}

// openPinger opens an ICMP socket in the named namespace.
func openPinger(nsName string) (*pinger, error) {
	var c *icmp.PacketConn
	err := netnsutil.DoNamed(nsName, func() error {
		var err error
		c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: icmp socket in %s: %w", nsName, err)
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	return &pinger{conn: c, id: int(binary.BigEndian.Uint16(b[:]))}, nil
}

func (p *pinger) close() { p.conn.Close() }

// send sends one echo request to dst and returns its sequence number.
func (p *pinger) send(dst netip.Addr) (int, error) {
	p.seq = (p.seq + 1) & 0xffff
	m := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: p.seq, Data: []byte("weft-lab")}}
	b, err := m.Marshal(nil)
	if err != nil {
		return 0, err
	}
	if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, fmt.Errorf("lab: echo to %s: %w", dst, err)
	}
	return p.seq, nil
}

// recv waits until deadline for an echo reply carrying this pinger's id and
// returns its source and sequence number. ok is false at the deadline.
func (p *pinger) recv(deadline time.Time) (src netip.Addr, seq int, ok bool, err error) {
	buf := make([]byte, 1500)
	if err := p.conn.SetReadDeadline(deadline); err != nil {
		return netip.Addr{}, 0, false, err
	}
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return netip.Addr{}, 0, false, nil
			}
			return netip.Addr{}, 0, false, err
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		echo, isEcho := m.Body.(*icmp.Echo)
		ip, isIP := from.(*net.IPAddr)
		if !isEcho || !isIP || echo.ID != p.id {
			continue
		}
		a, _ := netip.AddrFromSlice(ip.IP)
		return a.Unmap(), echo.Seq, true, nil
	}
}

// ping sends echo requests to dst every interval until one is answered or
// ctx is done.
func pingUntil(ctx context.Context, nsName string, dst netip.Addr, interval time.Duration) error {
	p, err := openPinger(nsName)
	if err != nil {
		return err
	}
	defer p.close()
	for {
		if _, err := p.send(dst); err != nil {
			return err
		}
		deadline := time.Now().Add(interval)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		for {
			src, _, ok, err := p.recv(deadline)
			if err != nil {
				return fmt.Errorf("lab: ping %s from %s: %w", dst, nsName, err)
			}
			if !ok {
				break
			}
			if src == dst {
				return nil
			}
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("lab: ping %s from %s: no reply: %w", dst, nsName, err)
		}
	}
}

// Matrix is the result of an all-pairs reachability check: OK[i][j]
// reports whether pod i got an echo reply from pod j.
type Matrix struct {
	Pods []PodState
	OK   [][]bool
}

// All reports whether every pod reached every other pod.
func (m *Matrix) All() bool {
	for i := range m.OK {
		for j := range m.OK[i] {
			if i != j && !m.OK[i][j] {
				return false
			}
		}
	}
	return true
}

// Missing lists the pairs that did not answer, as "from -> to" strings.
func (m *Matrix) Missing() []string {
	var out []string
	for i := range m.OK {
		for j := range m.OK[i] {
			if i != j && !m.OK[i][j] {
				out = append(out, fmt.Sprintf("%s -> %s (%s)", m.Pods[i].Name, m.Pods[j].Name, m.Pods[j].IP))
			}
		}
	}
	return out
}

// reachability pings every pod from every other pod, in rounds, until all
// pairs have answered or ctx is done. It returns the matrix either way.
func reachability(ctx context.Context, pods []PodState) (*Matrix, error) {
	m := &Matrix{Pods: pods, OK: make([][]bool, len(pods))}
	addrs := make([]netip.Addr, len(pods))
	for i, p := range pods {
		m.OK[i] = make([]bool, len(pods))
		a, err := netip.ParseAddr(p.IP)
		if err != nil {
			return m, fmt.Errorf("lab: pod %s: address %q: %w", p.Name, p.IP, err)
		}
		addrs[i] = a
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := probeRow(ctx, pods[i].Netns, i, addrs, m.OK[i]); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return m, errors.Join(errs...)
}

// probeRow fills row (pod i's line of the matrix).
func probeRow(ctx context.Context, nsName string, self int, addrs []netip.Addr, row []bool) error {
	p, err := openPinger(nsName)
	if err != nil {
		return err
	}
	defer p.close()
	row[self] = true
	index := make(map[netip.Addr]int, len(addrs))
	for j, a := range addrs {
		index[a] = j
	}
	for round := 0; ; round++ {
		pending := 0
		for j, a := range addrs {
			if !row[j] {
				pending++
				if _, err := p.send(a); err != nil {
					// A missing route answers ENETUNREACH: keep trying.
					continue
				}
			}
		}
		if pending == 0 {
			return nil
		}
		wait := 50 * time.Millisecond << min(round, 4)
		deadline := time.Now().Add(wait)
		for {
			src, _, ok, err := p.recv(deadline)
			if err != nil {
				return fmt.Errorf("lab: icmp in %s: %w", nsName, err)
			}
			if !ok {
				break
			}
			if j, known := index[src]; known {
				row[j] = true
			}
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}
