// Package netnsutil runs code inside Linux network namespaces safely.
//
// A network namespace belongs to an OS thread, not to a goroutine. [Do]
// runs a function on a fresh goroutine locked to its thread, switches that
// thread into the namespace, and switches it back before unlocking it. If
// switching back fails, the thread stays locked and the Go runtime discards
// it when the goroutine ends, so no other goroutine ever runs inside the
// namespace by accident. Sockets and netlink handles opened inside stay in
// the namespace wherever they are used later.
package netnsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are bind-mounted, as
// `ip netns add` does, so that `ip netns exec` finds them.
const Dir = "/run/netns"

// Do runs fn on an OS thread inside ns and returns its error. A handle
// that is not open (netns.None()) means the current namespace: fn then runs
// directly on the calling goroutine.
func Do(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: enter namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netns: leave namespace: %w", err))
			return // the thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DoNamed runs fn on an OS thread inside the namespace /run/netns/<name>.
func DoNamed(name string, fn func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer ns.Close()
	return Do(ns, fn)
}

// Create makes a network namespace bind-mounted at /run/netns/<name> and
// returns a handle to it. It fails if the name is taken.
func Create(name string) (netns.NsHandle, error) {
	if _, err := os.Stat(filepath.Join(Dir, name)); err == nil {
		return netns.None(), fmt.Errorf("netns %s already exists", name)
	}
	h := netns.None()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: current namespace: %w", err)
			return
		}
		defer orig.Close()
		nh, nerr := netns.NewNamed(name) // moves this thread into the new namespace
		if err := netns.Set(orig); err != nil {
			if nerr == nil {
				nh.Close()
			}
			errc <- errors.Join(nerr, fmt.Errorf("netns: leave namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		if nerr != nil {
			errc <- fmt.Errorf("netns: create %s: %w", name, nerr)
			return
		}
		h = nh
		errc <- nil
	}()
	return h, <-errc
}

// Delete unmounts and removes /run/netns/<name>; a missing namespace is not
// an error.
func Delete(name string) error {
	p := filepath.Join(Dir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netns: unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("netns: remove %s: %w", p, err)
	}
	return nil
}
