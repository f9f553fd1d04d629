package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func testPool(s string) Pool {
	p := netip.MustParsePrefix(s)
	return Pool{Subnet: p, Gateway: p.Masked().Addr().Next()}
}

func TestPoolBounds(t *testing.T) {
	p := testPool("10.244.7.0/24")
	for a, want := range map[string]bool{
		"10.244.7.0": false, "10.244.7.1": false, "10.244.7.2": true,
		"10.244.7.254": true, "10.244.7.255": false, "10.244.8.2": false,
	} {
		if got := p.Contains(netip.MustParseAddr(a)); got != want {
			t.Errorf("Contains(%s) = %t, want %t", a, got, want)
		}
	}
}

func TestAllocateRoundRobinExhaustReuse(t *testing.T) {
	s, err := OpenStore(t.TempDir(), "net")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pool := testPool("10.244.7.0/29") // .2 .. .6
	var got []netip.Addr
	for i := range 5 {
		a, err := s.Allocate(fmt.Sprint("c", i), "eth0", pool)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a)
	}
	if want := netip.MustParseAddr("10.244.7.2"); got[0] != want || got[4] != netip.MustParseAddr("10.244.7.6") {
		t.Fatalf("got %v, want .2 to .6 in order", got)
	}
	// The same attachment gets its address back.
	if a, err := s.Allocate("c3", "eth0", pool); err != nil || a != got[3] {
		t.Fatalf("re-ADD c3: got %v, %v, want %v", a, err, got[3])
	}
	if _, err := s.Allocate("c9", "eth0", pool); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("6th allocation: got %v, want ErrPoolExhausted", err)
	}
	freed, err := s.Release("c1", "eth0")
	if err != nil || len(freed) != 1 || freed[0] != got[1] {
		t.Fatalf("release c1: %v %v", freed, err)
	}
	if a, err := s.Allocate("c9", "eth0", pool); err != nil || a != got[1] {
		t.Fatalf("after release: got %v, %v, want %v", a, err, got[1])
	}
	// Releasing again is a no-op.
	if freed, err := s.Release("c1", "eth0"); err != nil || len(freed) != 0 {
		t.Fatalf("second release: %v %v", freed, err)
	}
}

func TestAllocateSkipsRecentlyReleased(t *testing.T) {
	s, err := OpenStore(t.TempDir(), "net")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pool := testPool("10.244.7.0/24")
	a1, _ := s.Allocate("a", "eth0", pool)
	if _, err := s.Release("a", "eth0"); err != nil {
		t.Fatal(err)
	}
	a2, err := s.Allocate("b", "eth0", pool)
	if err != nil || a2 == a1 {
		t.Fatalf("got %v (%v), want an address other than the one just released (%v)", a2, err, a1)
	}
}

// TestHostLocalFormat reads and releases a file written by host-local (with
// and without the interface name) and writes files host-local can read.
func TestHostLocalFormat(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, "cbr0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "cbr0", "10.244.7.9"), []byte("old\r\neth0"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "cbr0", "10.244.7.10"), []byte("older"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "cbr0", "last_reserved_ip.0"), []byte("10.244.7.10"), 0o600))
	a, err := s.Allocate("new", "eth0", testPool("10.244.7.0/24"))
	if err != nil || a != netip.MustParseAddr("10.244.7.11") {
		t.Fatalf("got %v %v, want 10.244.7.11 after host-local's last reservation", a, err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "cbr0", "10.244.7.11"))
	if string(b) != "new\r\neth0" {
		t.Errorf("file content %q, want host-local's format", b)
	}
	if freed, err := s.Release("older", "eth0"); err != nil || len(freed) != 1 {
		t.Errorf("release of an id-only file: %v %v", freed, err)
	}
	if freed, err := s.Release("old", "eth0"); err != nil || len(freed) != 1 {
		t.Errorf("release of host-local file: %v %v", freed, err)
	}
}

func TestRetain(t *testing.T) {
	s, err := OpenStore(t.TempDir(), "net")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pool := testPool("10.244.7.0/24")
	for _, id := range []string{"a", "b", "c"} {
		if _, err := s.Allocate(id, "eth0", pool); err != nil {
			t.Fatal(err)
		}
	}
	freed, err := s.Retain(func(id, ifname string) bool { return id == "b" })
	if err != nil || len(freed) != 2 {
		t.Fatalf("freed %v, %v", freed, err)
	}
	all, _ := s.List()
	if len(all) != 1 || all[0].ContainerID != "b" {
		t.Fatalf("left %v, want only b", all)
	}
}

// TestConcurrentAllocate: many stores (separate lock descriptions, as in
// separate plugin processes) allocating at once never hand out an address
// twice.
func TestConcurrentAllocate(t *testing.T) {
	dir := t.TempDir()
	pool := testPool("10.244.7.0/24")
	const n = 100
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := OpenStore(dir, "net")
			if err != nil {
				errs[i] = err
				return
			}
			defer s.Close()
			errs[i] = s.Locked(func() (err error) {
				addrs[i], err = s.Allocate(fmt.Sprint("c", i), "eth0", pool)
				return err
			})
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, a := range addrs {
		if errs[i] != nil {
			t.Fatalf("allocation %d: %v", i, errs[i])
		}
		if j, dup := seen[a]; dup {
			t.Fatalf("address %s handed to %d and %d", a, j, i)
		}
		seen[a] = i
	}
}
