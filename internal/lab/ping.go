package lab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/netnsutil"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/time/rate"
)

// pinger sends ICMP echo requests from inside one namespace. The raw socket
// is opened on a thread inside the namespace and stays there; it is then
// used from any goroutine. The kernel filters what it receives down to echo
// replies, so that echo requests from other pods do not crowd the buffer.
type pinger struct {
	conn *net.IPConn
	id   int
	mu   sync.Mutex
	seq  int
}

// openPinger opens an ICMP socket in the named namespace.
func openPinger(nsName string) (*pinger, error) {
	var c *net.IPConn
	err := netnsutil.DoNamed(nsName, func() error {
		pc, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		c = pc.(*net.IPConn)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lab: icmp socket in %s: %w", nsName, err)
	}
	var f ipv4.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv4.ICMPTypeEchoReply)
	if err := ipv4.NewPacketConn(c).SetICMPFilter(&f); err != nil {
		c.Close()
		return nil, fmt.Errorf("lab: icmp filter in %s: %w", nsName, err)
	}
	_ = c.SetReadBuffer(1 << 20) // best effort: the default is enough for small labs
	var b [2]byte
	_, _ = rand.Read(b[:])
	return &pinger{conn: c, id: int(binary.BigEndian.Uint16(b[:]))}, nil
}

func (p *pinger) close() { p.conn.Close() }

// send sends one echo request to dst.
func (p *pinger) send(dst netip.Addr) error {
	p.mu.Lock()
	p.seq = (p.seq + 1) & 0xffff
	seq := p.seq
	p.mu.Unlock()
	m := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: seq, Data: []byte("weft-lab")}}
	b, err := m.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("lab: echo to %s: %w", dst, err)
	}
	return nil
}

// receive calls got with the source of every echo reply that carries this
// pinger's id, until the socket is closed.
func (p *pinger) receive(got func(netip.Addr)) {
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. a truncated datagram
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
		got(a.Unmap())
	}
}

// pingUntil sends echo requests to dst every interval until one is
// answered or ctx is done.
func pingUntil(ctx context.Context, nsName string, dst netip.Addr, interval time.Duration) error {
	p, err := openPinger(nsName)
	if err != nil {
		return err
	}
	answered := make(chan struct{})
	var once sync.Once
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.receive(func(src netip.Addr) {
			if src == dst {
				once.Do(func() { close(answered) })
			}
		})
	}()
	defer func() { p.close(); <-done }()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		_ = p.send(dst) // no route yet answers ENETUNREACH: keep trying
		select {
		case <-answered:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("lab: ping %s from %s: no reply: %w", dst, nsName, ctx.Err())
		case <-t.C:
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

// failingHosts returns the hosts (indexes) of the pods that could not reach
// some pod or be reached by one, in order.
func (m *Matrix) failingHosts() []int {
	seen := map[int]bool{}
	var out []int
	for i := range m.OK {
		for j := range m.OK[i] {
			if i == j || m.OK[i][j] {
				continue
			}
			for _, h := range []int{m.Pods[i].HostIndex, m.Pods[j].HostIndex} {
				if !seen[h] {
					seen[h] = true
					out = append(out, h)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// echoRate bounds the echo requests the whole check sends per second. An
// unpaced all-pairs burst (thousands of packets at once in a big lab)
// overflows the kernel's per-CPU backlog that veth traffic goes through,
// and the same pairs lose out round after round.
const (
	echoRate  = 20000
	echoBurst = 64
)

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
	limit := rate.NewLimiter(echoRate, echoBurst)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := probeRow(ctx, limit, pods[i].Netns, i, addrs, m.OK[i]); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return m, errors.Join(errs...)
}

// probeRow fills row (pod self's line of the matrix): it sends an echo to
// every pod that has not answered yet, paced by limit, waits a round
// (longer each time), and repeats until all have answered or ctx is done.
func probeRow(ctx context.Context, limit *rate.Limiter, nsName string, self int, addrs []netip.Addr, row []bool) error {
	p, err := openPinger(nsName)
	if err != nil {
		return err
	}
	index := make(map[netip.Addr]int, len(addrs))
	for j, a := range addrs {
		index[a] = j
	}
	var (
		mu      sync.Mutex
		pending = len(addrs) - 1
		allDone = make(chan struct{})
		got     = make([]bool, len(addrs))
	)
	got[self] = true
	if pending == 0 {
		close(allDone)
	}
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		p.receive(func(src netip.Addr) {
			j, known := index[src]
			if !known {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if !got[j] {
				got[j] = true
				pending--
				if pending == 0 {
					close(allDone)
				}
			}
		})
	}()
	defer func() {
		p.close()
		<-recvDone
		mu.Lock()
		copy(row, got)
		mu.Unlock()
	}()
	for round := 0; ; round++ {
		for j, a := range addrs {
			mu.Lock()
			skip := got[j]
			mu.Unlock()
			if skip {
				continue
			}
			if err := limit.Wait(ctx); err != nil {
				return nil // ctx done: the matrix says what answered
			}
			_ = p.send(a) // no route yet answers ENETUNREACH: keep trying
		}
		wait := time.NewTimer(100 * time.Millisecond << min(round, 3))
		select {
		case <-allDone:
			wait.Stop()
			return nil
		case <-ctx.Done():
			wait.Stop()
			return nil
		case <-wait.C:
		}
	}
}
