package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces are bind-mounted, as
// `ip netns add` does, so that `ip netns exec` finds them.
const NetnsDir = "/run/netns"

// Threads and namespaces: a network namespace belongs to an OS thread, not
// to a goroutine. Every function here that enters a namespace does so on a
// fresh goroutine locked to its thread and switches the thread back before
// unlocking it. If switching back fails, the thread stays locked and the Go
// runtime discards it when the goroutine ends, so no other goroutine can
// ever run inside a lab namespace by accident.

// inNS runs fn on an OS thread inside ns.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: enter namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Keep the thread locked: it dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("lab: leave namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// inNamed runs fn on an OS thread inside the named namespace.
func inNamed(name string, fn func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("lab: namespace %s: %w", name, err)
	}
	defer ns.Close()
	return inNS(ns, fn)
}

// createNamed creates a network namespace bind-mounted at
// /run/netns/<name>. It fails if the name is taken.
func createNamed(name string) (netns.NsHandle, error) {
	var h netns.NsHandle = -1
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: current namespace: %w", err)
			return
		}
		defer orig.Close()
		// NewNamed unshares this thread into the new namespace.
		nh, nerr := netns.NewNamed(name)
		if err := netns.Set(orig); err != nil {
			if nerr == nil {
				nh.Close()
			}
			errc <- errors.Join(nerr, fmt.Errorf("lab: leave namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		if nerr != nil {
			errc <- fmt.Errorf("lab: create namespace %s: %w", name, nerr)
			return
		}
		h = nh
		errc <- nil
	}()
	err := <-errc
	return h, err
}

// deleteNamed unmounts and removes /run/netns/<name>. A missing namespace
// is not an error.
func deleteNamed(name string) error {
	p := filepath.Join(NetnsDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("lab: unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("lab: remove %s: %w", p, err)
	}
	return nil
}

// listNamed returns the named namespaces whose names start with prefix.
func listNamed(prefix string) ([]string, error) {
	ents, err := os.ReadDir(NetnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// nsInode returns the inode of a namespace file (a /run/netns bind mount or
// /proc/<pid>/ns/net), which identifies the namespace.
func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// writeSysctl writes value to /proc/sys/<key> from a thread inside ns;
// /proc/sys/net resolves to the namespace of the thread that opens it.
func writeSysctl(ns netns.NsHandle, key, value string) error {
	return inNS(ns, func() error {
		p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("lab: sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}
