package store

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/lease"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// LeaseSet is the current set of leases, kept up to date by
// [Store.WatchLeases]. Changes are coalesced: [LeaseSet.Changed] signals
// that something changed since the last [LeaseSet.Leases], however many
// watch events that was, so a burst of events costs the consumer one
// snapshot, not one per event.
type LeaseSet struct {
	mu      sync.Mutex
	cur     map[string]lease.Lease
	loaded  bool
	changed chan struct{}
}

// NewLeaseSet returns an empty set that has not been loaded yet.
func NewLeaseSet() *LeaseSet {
	return &LeaseSet{cur: map[string]lease.Lease{}, changed: make(chan struct{}, 1)}
}

// Changed receives a value after every change (coalesced) and after the
// first load.
func (w *LeaseSet) Changed() <-chan struct{} { return w.changed }

// Leases returns a snapshot of the set (a new slice the caller owns), and
// whether the set has been loaded from etcd at least once.
func (w *LeaseSet) Leases() ([]lease.Lease, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]lease.Lease, 0, len(w.cur))
	for _, l := range w.cur {
		out = append(out, l)
	}
	return out, w.loaded
}

// update applies fn to the set under the lock and signals the change.
func (w *LeaseSet) update(fn func(cur map[string]lease.Lease) map[string]lease.Lease) {
	w.mu.Lock()
	w.cur = fn(w.cur)
	w.loaded = true
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default: // a signal is already pending
	}
}

// WatchLeases keeps set equal to the leases in etcd until ctx is done. It
// loads every lease, then follows one prefix watch; after a compaction or
// an error it reloads everything (with backoff on errors). Leases that do
// not parse are left out with a warning naming their key.
func (s *Store) WatchLeases(ctx context.Context, set *LeaseSet) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.watchOnce(ctx, set)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("lease watch interrupted; reloading", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
		if errors.Is(err, errWatchCompacted) {
			backoff = 100 * time.Millisecond
		}
	}
}

var errWatchCompacted = errors.New("watch revision compacted")

// watchOnce loads all leases, then follows changes until the watch fails.
func (s *Store) watchOnce(ctx context.Context, set *LeaseSet) error {
	resp, err := s.cli.Get(ctx, s.SubnetsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	fresh := make(map[string]lease.Lease, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		s.apply(fresh, string(kv.Key), kv.Value, kv.Lease, kv.ModRevision)
	}
	set.update(func(map[string]lease.Lease) map[string]lease.Lease { return fresh })

	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, s.SubnetsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for wr := range wch {
		if wr.CompactRevision != 0 || errors.Is(wr.Err(), rpctypes.ErrCompacted) {
			return errWatchCompacted
		}
		if err := wr.Err(); err != nil {
			return err
		}
		if len(wr.Events) == 0 {
			continue
		}
		set.update(func(cur map[string]lease.Lease) map[string]lease.Lease {
			for _, ev := range wr.Events {
				key := string(ev.Kv.Key)
				if ev.Type == clientv3.EventTypeDelete {
					delete(cur, key)
					continue
				}
				s.apply(cur, key, ev.Kv.Value, ev.Kv.Lease, ev.Kv.ModRevision)
			}
			return cur
		})
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("watch channel closed")
}

// apply decodes one key into cur, dropping it with a warning when it does
// not parse.
func (s *Store) apply(cur map[string]lease.Lease, key string, value []byte, etcdLease, rev int64) {
	l, err := lease.Decode(key, value)
	if err != nil {
		delete(cur, key)
		s.log.Warn("skipping a lease that does not parse", "key", key, "err", err)
		return
	}
	l.EtcdLease, l.ModRevision = etcdLease, rev
	cur[key] = l
}
