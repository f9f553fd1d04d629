package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/etcdserver/etcdtest"
	"github.com/weft-net/weft/internal/lease"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func newStore(t *testing.T, endpoint string) *Store {
	t.Helper()
	s, err := New(context.Background(), Options{Endpoints: []string{endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func network64(t *testing.T) *config.Network {
	t.Helper()
	n, err := config.Parse([]byte(`{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.73.0","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func host(i int) lease.Attrs {
	return lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(10 + i%250)}), BackendType: "host-gw"}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// 100 hosts start at once on a network of 64 subnets: exactly 64 get one,
// all different, and the rest are told the network is exhausted.
func TestAcquireConcurrent(t *testing.T) {
	ep := etcdtest.Start(t)
	n := network64(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	results := make([]lease.Lease, 100)
	errs := make([]error, 100)
	for i := range 100 {
		s := newStore(t, ep)
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = s.Acquire(ctx, AcquireRequest{Network: n, Attrs: host(i), TTL: time.Hour})
		}()
	}
	wg.Wait()
	seen := map[netip.Prefix]int{}
	ok := 0
	for i := range 100 {
		if errs[i] != nil {
			if !errors.Is(errs[i], ErrExhausted) {
				t.Errorf("host %d: %v, want ErrExhausted", i, errs[i])
			} else if !strings.Contains(errs[i].Error(), "10.244.0.0/16") || !strings.Contains(errs[i].Error(), "64 subnets") {
				t.Errorf("exhaustion error does not name the network and its size: %v", errs[i])
			}
			continue
		}
		ok++
		if j, dup := seen[results[i].Subnet]; dup {
			t.Errorf("subnet %s given to hosts %d and %d", results[i].Subnet, j, i)
		}
		seen[results[i].Subnet] = i
		if !n.Assignable(results[i].Subnet) {
			t.Errorf("host %d got %s outside SubnetMin..SubnetMax", i, results[i].Subnet)
		}
	}
	if ok != 64 {
		t.Fatalf("%d hosts got a subnet, want exactly 64", ok)
	}
	ls, err := newStore(t, ep).Leases(ctx)
	if err != nil || len(ls) != 64 {
		t.Fatalf("etcd holds %d leases (%v), want 64", len(ls), err)
	}
	for _, l := range ls {
		if i, found := seen[l.Subnet]; !found || l.Attrs.PublicIP != host(i).PublicIP {
			t.Errorf("etcd lease %s (%s) does not match what Acquire returned", l.Subnet, l.Attrs.PublicIP)
		}
	}
}

// A restarted host gets its own lease back, with the same etcd lease.
func TestReuseAfterRestart(t *testing.T) {
	ep := etcdtest.Start(t)
	n, ctx := network64(t), ctxT(t)
	first, err := newStore(t, ep).Acquire(ctx, AcquireRequest{Network: n, Attrs: host(1), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	second, err := newStore(t, ep).Acquire(ctx, AcquireRequest{Network: n, Attrs: host(1), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if second.Subnet != first.Subnet || second.EtcdLease != first.EtcdLease {
		t.Fatalf("restart got %s (lease %x), want %s (lease %x)", second.Subnet, second.EtcdLease, first.Subnet, first.EtcdLease)
	}
	// A changed value (new backend data) is written in place.
	changed := host(1)
	changed.BackendType = "vxlan"
	third, err := newStore(t, ep).Acquire(ctx, AcquireRequest{Network: n, Attrs: changed, TTL: time.Hour})
	if err != nil || third.Subnet != first.Subnet {
		t.Fatalf("got %v, %v", third.Subnet, err)
	}
	ls, _ := newStore(t, ep).Leases(ctx)
	if len(ls) != 1 || ls[0].Attrs.BackendType != "vxlan" {
		t.Fatalf("leases after update: %+v", ls)
	}
}

// The subnet remembered in subnet.env is reused while its key is absent,
// but never taken back from a host that got it in the meantime.
func TestPreviousSubnetNoStealing(t *testing.T) {
	ep := etcdtest.Start(t)
	n, ctx := network64(t), ctxT(t)
	s := newStore(t, ep)
	want := netip.MustParsePrefix("10.244.42.0/24")
	got, err := s.Acquire(ctx, AcquireRequest{Network: n, Attrs: host(1), TTL: time.Hour, Previous: want})
	if err != nil || got.Subnet != want {
		t.Fatalf("previous subnet not reused: %v %v", got.Subnet, err)
	}
	// Host 1 is away past its TTL: its lease expires (revoked here).
	if _, err := s.Client().Revoke(ctx, clientv3.LeaseID(got.EtcdLease)); err != nil {
		t.Fatal(err)
	}
	// Host 2 is handed that subnet.
	other, err := s.Acquire(ctx, AcquireRequest{Network: n, Attrs: host(2), TTL: time.Hour, Previous: want})
	if err != nil || other.Subnet != want {
		t.Fatalf("host 2: %v %v", other.Subnet, err)
	}
	// Host 1 comes back remembering the subnet: it must get another one.
	back, err := s.Acquire(ctx, AcquireRequest{Network: n, Attrs: host(1), TTL: time.Hour, Previous: want})
	if err != nil {
		t.Fatal(err)
	}
	if back.Subnet == want {
		t.Fatalf("host 1 took back %s from host 2", want)
	}
}

// Reservations never expire and go only to their PublicIP.
func TestReservations(t *testing.T) {
	ep := etcdtest.Start(t)
	n, ctx := network64(t), ctxT(t)
	s := newStore(t, ep)
	reserved := netip.MustParsePrefix("10.244.20.0/24")
	if err := s.PutLeases(ctx, []lease.Lease{{Subnet: reserved, Attrs: lease.Attrs{PublicIP: host(7).PublicIP}}}, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 63 {
		l, err := s.Acquire(ctx, AcquireRequest{Network: n, Attrs: host(100 + i), TTL: time.Hour, Previous: reserved})
		if err != nil {
			t.Fatalf("host %d: %v", 100+i, err)
		}
		if l.Subnet == reserved {
			t.Fatalf("reserved subnet given to host %d", 100+i)
		}
	}
	if _, err := s.Acquire(ctx, AcquireRequest{Network: n, Attrs: host(200), TTL: time.Hour}); !errors.Is(err, ErrExhausted) {
		t.Fatalf("want exhaustion with the reservation left, got %v", err)
	}
	l, err := s.Acquire(ctx, AcquireRequest{Network: n, Attrs: host(7), TTL: time.Hour})
	if err != nil || l.Subnet != reserved || !l.Reserved() {
		t.Fatalf("owner of the reservation got %v reserved=%v err=%v", l.Subnet, l.Reserved(), err)
	}
	resp, _ := s.Client().Get(ctx, s.LeaseKey(reserved))
	if len(resp.Kvs) != 1 || resp.Kvs[0].Lease != 0 {
		t.Fatalf("reservation key now has an etcd lease: %+v", resp.Kvs)
	}
}

// Without renewal a lease expires; with KeepAlive it outlives its TTL; when
// it is revoked, KeepAlive reports the loss.
func TestRenewalAndExpiry(t *testing.T) {
	ep := etcdtest.Start(t)
	n, ctx := network64(t), ctxT(t)
	s := newStore(t, ep)
	const ttl = 2 * time.Second

	expiring, err := s.Acquire(ctx, AcquireRequest{Network: n, Attrs: host(1), TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	w := s.Client().Watch(ctx, s.LeaseKey(expiring.Subnet))
	select {
	case wr := <-w:
		if len(wr.Events) != 1 || wr.Events[0].Type != clientv3.EventTypeDelete {
			t.Fatalf("unexpected watch event %+v", wr.Events)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("lease without renewal did not expire")
	}

	kept, err := s.Acquire(ctx, AcquireRequest{Network: n, Attrs: host(2), TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	lost := s.KeepAlive(kctx, kept)
	deadline := time.Now().Add(3 * ttl)
	for time.Now().Before(deadline) {
		resp, err := s.Client().Get(ctx, s.LeaseKey(kept.Subnet))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("renewed lease vanished: %v", err)
		}
		select {
		case <-lost:
			t.Fatal("KeepAlive reported a loss while etcd is up")
		case <-time.After(ttl / 2):
		}
	}
	if _, err := s.Client().Revoke(ctx, clientv3.LeaseID(kept.EtcdLease)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-time.After(20 * time.Second):
		t.Fatal("KeepAlive did not report the revoked lease")
	}
}

// The watch sends the full set after every change and skips leases that do
// not parse, naming their key in a warning.
func TestWatchLeases(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := ctxT(t)
	var logBuf syncBuffer
	s, err := New(ctx, Options{Endpoints: []string{ep}, Log: slog.New(slog.NewTextHandler(&logBuf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	set := NewLeaseSet()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.WatchLeases(wctx, set)
	waitFor := func(want int) []lease.Lease {
		t.Helper()
		for {
			select {
			case <-set.Changed():
				if got, loaded := set.Leases(); loaded && len(got) == want {
					return got
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no snapshot with %d leases", want)
			}
		}
	}
	waitFor(0)
	var ls []lease.Lease
	for i := range 5 {
		ls = append(ls, lease.Lease{Subnet: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", 10+i)), Attrs: host(i)})
	}
	if err := s.PutLeases(ctx, ls, time.Hour); err != nil {
		t.Fatal(err)
	}
	waitFor(5)
	bad := s.SubnetsPrefix() + "10.244.99.0-24"
	if _, err := s.Client().Put(ctx, bad, `{"PublicIP":"not-an-ip"`); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteLease(ctx, ls[0].Subnet); err != nil {
		t.Fatal(err)
	}
	got := waitFor(4)
	for _, l := range got {
		if l.Subnet == ls[0].Subnet || l.Subnet.String() == "10.244.99.0/24" {
			t.Fatalf("snapshot still has %s", l.Subnet)
		}
	}
	if !bytes.Contains(logBuf.Bytes(), []byte(bad)) {
		t.Fatalf("no warning naming %s in the log:\n%s", bad, logBuf.Bytes())
	}
}

func TestConfigSetValidates(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := ctxT(t)
	s := newStore(t, ep)
	if _, err := s.GetConfig(ctx); !errors.Is(err, ErrNoConfig) {
		t.Fatalf("empty store: got %v", err)
	}
	if err := s.SetConfig(ctx, []byte(`{"Network":"10.244.0.0/16","SubnetLen":40}`)); err == nil {
		t.Fatal("invalid config accepted")
	}
	if _, err := s.GetConfigRaw(ctx); !errors.Is(err, ErrNoConfig) {
		t.Fatal("invalid config was written")
	}
	if err := s.SetConfig(ctx, []byte(`{"Network":"10.244.0.0/16"}`)); err != nil {
		t.Fatal(err)
	}
	n, err := s.GetConfig(ctx)
	if err != nil || n.Network.String() != "10.244.0.0/16" {
		t.Fatalf("got %v %v", n, err)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}
