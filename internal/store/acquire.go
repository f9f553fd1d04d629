package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrExhausted is returned when every assignable subnet is taken.
var ErrExhausted = errors.New("network exhausted")

// maxAttempts bounds the transactions one Acquire call tries before it
// gives up; each failed attempt returns the fresh list of leases in the same
// round trip, so a call costs at most 2+maxAttempts round trips.
const maxAttempts = 16

// AcquireRequest says which host wants a subnet.
type AcquireRequest struct {
	// Network is the network configuration to allocate from.
	Network *config.Network
	// Attrs is the lease value to publish; Attrs.PublicIP identifies the host.
	Attrs lease.Attrs
	// TTL is the etcd lease's time to live.
	TTL time.Duration
	// Previous is the subnet this host used before (from subnet.env or the
	// running agent); it is reused only while its key is absent or still
	// holds this host's PublicIP. Zero for none.
	Previous netip.Prefix
}

// snapshot is the state of the subnets prefix at one revision.
type snapshot struct {
	kvs []*mvccpb.KeyValue
}

// Acquire returns a lease on a subnet for the host, in this order of
// preference: the host's own existing lease or reservation (same
// PublicIP), the Previous subnet if it is still free, then a random free
// subnet. Claims are etcd transactions on the key's create revision, so two
// hosts never get one subnet. It fails with an error wrapping
// [ErrExhausted] when nothing is free; the caller retries with backoff.
func (s *Store) Acquire(ctx context.Context, req AcquireRequest) (lease.Lease, error) {
	if req.TTL <= 0 {
		return lease.Lease{}, errors.New("acquire: TTL must be positive")
	}
	value, err := req.Attrs.Encode()
	if err != nil {
		return lease.Lease{}, fmt.Errorf("acquire: encode lease: %w", err)
	}
	resp, err := s.cli.Get(ctx, s.SubnetsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return lease.Lease{}, fmt.Errorf("acquire: list leases: %w", err)
	}
	snap := snapshot{kvs: resp.Kvs}
	var granted clientv3.LeaseID
	defer func() {
		if granted != 0 { // granted but never attached: give it back
			s.cli.Revoke(context.WithoutCancel(ctx), granted)
		}
	}()
	grant := func() (clientv3.LeaseID, error) {
		if granted == 0 {
			g, err := s.cli.Grant(ctx, int64(req.TTL/time.Second))
			if err != nil {
				return 0, fmt.Errorf("acquire: grant etcd lease: %w", err)
			}
			granted = g.ID
		}
		return granted, nil
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		taken, own := s.scan(snap, req)
		if own != nil {
			l, ok, next, err := s.renewOwn(ctx, req, own, value, grant)
			if err != nil {
				return lease.Lease{}, err
			}
			if ok {
				if l.EtcdLease == int64(granted) {
					granted = 0
				}
				return l, nil
			}
			snap = next
			continue
		}
		subnet, ok := s.pick(req, taken)
		if !ok {
			return lease.Lease{}, fmt.Errorf("%w: %s has no free subnet: all %d subnets of /%d between SubnetMin %s and SubnetMax %s are leased or reserved",
				ErrExhausted, req.Network.Network, req.Network.SubnetCount(), req.Network.SubnetLen, req.Network.SubnetMin, req.Network.SubnetMax)
		}
		id, err := grant()
		if err != nil {
			return lease.Lease{}, err
		}
		key := s.LeaseKey(subnet)
		tr, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id))).
			Else(clientv3.OpGet(s.SubnetsPrefix(), clientv3.WithPrefix())).
			Commit()
		if err != nil {
			return lease.Lease{}, fmt.Errorf("acquire: claim %s: %w", subnet, err)
		}
		if tr.Succeeded {
			granted = 0
			return lease.Lease{Subnet: subnet, Attrs: req.Attrs, EtcdLease: int64(id), ModRevision: tr.Header.Revision,
				Expiration: time.Now().Add(req.TTL)}, nil
		}
		snap = snapshot{kvs: tr.Responses[0].GetResponseRange().Kvs}
	}
	return lease.Lease{}, fmt.Errorf("acquire: no subnet claimed after %d attempts: too much contention, will retry", maxAttempts)
}

// scan returns the subnets that are taken and this host's own entry, if any.
// A reservation of this host wins over a lease; among leases the Previous
// subnet wins.
func (s *Store) scan(snap snapshot, req AcquireRequest) (map[netip.Prefix]bool, *mvccpb.KeyValue) {
	taken := make(map[netip.Prefix]bool, len(snap.kvs))
	var own *mvccpb.KeyValue
	ownRank := 0
	for _, kv := range snap.kvs {
		p, err := lease.ParseSubnetKey(string(kv.Key))
		if err != nil {
			continue
		}
		taken[p] = true
		a, err := lease.DecodeAttrs(kv.Value)
		if err != nil || a.PublicIP != req.Attrs.PublicIP || !req.Network.Assignable(p) {
			continue
		}
		rank := 1
		if p == req.Previous {
			rank = 2
		}
		if kv.Lease == 0 {
			rank = 3
		}
		if rank > ownRank {
			own, ownRank = kv, rank
		}
	}
	return taken, own
}

// renewOwn takes over the host's existing key: a reservation keeps no etcd
// lease; a lease keeps its etcd lease while that is alive, else gets a new
// one. ok is false when the key changed under us; next is then fresh.
func (s *Store) renewOwn(ctx context.Context, req AcquireRequest, kv *mvccpb.KeyValue, value []byte, grant func() (clientv3.LeaseID, error)) (l lease.Lease, ok bool, next snapshot, err error) {
	subnet, _ := lease.ParseSubnetKey(string(kv.Key))
	l = lease.Lease{Subnet: subnet, Attrs: req.Attrs, EtcdLease: kv.Lease, ModRevision: kv.ModRevision}
	id := clientv3.LeaseID(kv.Lease)
	if id != 0 {
		ttl, err := s.cli.TimeToLive(ctx, id)
		if err != nil {
			return l, false, next, fmt.Errorf("acquire: check etcd lease of %s: %w", subnet, err)
		}
		if ttl.TTL <= 0 { // expired or revoked: the key is about to go
			if id, err = grant(); err != nil {
				return l, false, next, err
			}
		} else {
			l.Expiration = time.Now().Add(time.Duration(ttl.TTL) * time.Second)
		}
	}
	if id == clientv3.LeaseID(kv.Lease) && bytes.Equal(kv.Value, value) {
		return l, true, next, nil
	}
	var opts []clientv3.OpOption
	if id != 0 {
		opts = append(opts, clientv3.WithLease(id))
	}
	key := string(kv.Key)
	tr, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
		Then(clientv3.OpPut(key, string(value), opts...)).
		Else(clientv3.OpGet(s.SubnetsPrefix(), clientv3.WithPrefix())).
		Commit()
	if err != nil {
		return l, false, next, fmt.Errorf("acquire: update %s: %w", subnet, err)
	}
	if !tr.Succeeded {
		return l, false, snapshot{kvs: tr.Responses[0].GetResponseRange().Kvs}, nil
	}
	l.EtcdLease, l.ModRevision = int64(id), tr.Header.Revision
	if id != clientv3.LeaseID(kv.Lease) {
		l.Expiration = time.Now().Add(req.TTL)
	}
	return l, true, next, nil
}

// pick chooses a free subnet: Previous when free, else a random free one
// (random so that many hosts starting at once rarely collide).
func (s *Store) pick(req AcquireRequest, taken map[netip.Prefix]bool) (netip.Prefix, bool) {
	n := req.Network
	if req.Previous.IsValid() && n.Assignable(req.Previous) && !taken[req.Previous] {
		return req.Previous, true
	}
	count := n.SubnetCount()
	if count <= 1<<16 {
		free := make([]uint64, 0, 64)
		for i := uint64(0); i < count; i++ {
			if !taken[n.SubnetAt(i)] {
				free = append(free, i)
			}
		}
		if len(free) == 0 {
			return netip.Prefix{}, false
		}
		return n.SubnetAt(free[rand.IntN(len(free))]), true
	}
	// Huge ranges: random probes, then a linear scan from a random start.
	for range 64 {
		if p := n.SubnetAt(rand.Uint64N(count)); !taken[p] {
			return p, true
		}
	}
	start := rand.Uint64N(count)
	for i := uint64(0); i < count && i < uint64(len(taken))+1; i++ {
		if p := n.SubnetAt((start + i) % count); !taken[p] {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// KeepAlive renews the host's etcd lease until ctx is done. The returned
// channel is closed when the lease is lost (expired, revoked, or renewal
// failed for good) while ctx is still live: the caller must acquire again.
// Reservations need no renewal; their channel never closes.
func (s *Store) KeepAlive(ctx context.Context, l lease.Lease) <-chan struct{} {
	lost := make(chan struct{})
	if l.Reserved() {
		return lost
	}
	go func() {
		for {
			ch, err := s.cli.KeepAlive(ctx, clientv3.LeaseID(l.EtcdLease))
			if err == nil {
				for range ch {
				}
			}
			if ctx.Err() != nil {
				return
			}
			// The channel closes when the lease is gone or the client gave
			// up; ask etcd which.
			tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ttl, terr := s.cli.TimeToLive(tctx, clientv3.LeaseID(l.EtcdLease))
			cancel()
			if terr == nil && ttl.TTL <= 0 {
				s.log.Warn("etcd lease lost", "subnet", l.Subnet, "lease", fmt.Sprintf("%x", l.EtcdLease))
				close(lost)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
	return lost
}
