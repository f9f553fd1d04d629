// Package nstest gives tests fresh, uniquely named network namespaces that
// are removed when the test ends, and removes those left by crashed runs.
package nstest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/netnsutil"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, links and routes (run the suite as root, as CI does)")
	}
}

// NS is a test's network namespace.
type NS struct {
	// Name is the namespace's name under /run/netns.
	Name string
	// Handle refers to the namespace.
	Handle netns.NsHandle
	// Netlink is a netlink handle bound to the namespace.
	Netlink *netlink.Handle
}

// Do runs fn on a thread inside the namespace.
func (n *NS) Do(fn func() error) error { return netnsutil.Do(n.Handle, fn) }

var counter atomic.Int64

// New creates a namespace named <prefix><pid>-<n> with lo up, removed when
// the test ends. The first call for a prefix also removes namespaces with
// that prefix whose creating process is gone (left by a crashed run).
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	RequireRoot(t)
	CleanStale(prefix)
	name := fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), counter.Add(1))
	h, err := netnsutil.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		netnsutil.Delete(name)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		nl.Close()
		h.Close()
		if err := netnsutil.Delete(name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("netns %s: lo up: %v", name, err)
	}
	return &NS{Name: name, Handle: h, Netlink: nl}
}

// CleanStale removes namespaces named <prefix><pid>-<n> whose process no
// longer exists.
func CleanStale(prefix string) {
	ents, _ := os.ReadDir(netnsutil.Dir)
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", pidStr)); err == nil {
			continue
		}
		netnsutil.Delete(e.Name())
	}
}
