package vxlan

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNS runs fn on a thread inside ns (the current namespace when ns is not
// open). The thread is switched back before it is unlocked; if switching
// back fails the thread stays locked, so the runtime retires it instead of
// reusing it in the wrong namespace.
func inNS(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("return to network namespace (thread retired): %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}
