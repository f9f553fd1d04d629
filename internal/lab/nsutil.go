package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/netnsutil"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces are bind-mounted, as
// `ip netns add` does, so that `ip netns exec` finds them.
const NetnsDir = netnsutil.Dir

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
	return netnsutil.Do(ns, func() error {
		p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("lab: sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}
