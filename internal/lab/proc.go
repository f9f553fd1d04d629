package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/netnsutil"
)

// startIn starts argv inside ns, its stdout and stderr appended to logPath.
// The process gets a session of its own, so it outlives the caller (weftctl
// exits once the lab is up). The returned channel is closed when the caller
// has reaped the process.
func startIn(ns netns.NsHandle, argv []string, logPath string) (pid int, exited <-chan struct{}, err error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return 0, nil, fmt.Errorf("lab: log file: %w", err)
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// The child inherits the network namespace of the thread that forks it.
	if err := netnsutil.Do(ns, cmd.Start); err != nil {
		return 0, nil, fmt.Errorf("lab: start %s: %w", filepath.Base(argv[0]), err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // reap; the exit status is in the log
		close(done)
	}()
	return cmd.Process.Pid, done, nil
}

// childEnv is the environment of lab processes: the caller's, without
// WEFTD_* variables, so that every weftd is configured by its flags alone.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WEFTD_") {
			env = append(env, kv)
		}
	}
	return env
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

// waitGone polls until none of pids is alive or ctx is done.
func waitGone(ctx context.Context, pids []int) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		var left []int
		for _, p := range pids {
			if alive(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab: processes %v still running: %w", left, ctx.Err())
		case <-t.C:
		}
	}
}

// stopProcs sends SIGTERM to pids, waits up to grace for them to exit, then
// sends SIGKILL to what is left and waits again.
func stopProcs(pids []int, grace time.Duration) error {
	if len(pids) == 0 {
		return nil
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	err := waitGone(ctx, pids)
	cancel()
	if err == nil {
		return nil
	}
	for _, p := range pids {
		if alive(p) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return waitGone(ctx, pids)
}

// procsIn returns the processes whose network namespace is one of inodes,
// and the lab's own processes whose namespace is already gone (after a
// crash half-way through Down): those whose command line passes a path
// under dir as a lab flag.
func procsIn(inodes map[uint64]bool, dir string) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || !alive(pid) {
			continue
		}
		if ino, err := nsInode("/proc/" + e.Name() + "/ns/net"); err == nil && inodes[ino] {
			out = append(out, pid)
			continue
		}
		if dir != "" && labProcess(pid, dir) {
			out = append(out, pid)
		}
	}
	return out, nil
}

// labFlag reports whether arg is a flag through which the lab hands its
// processes a path under the lab's directory: weftd's --subnet-file and
// --state-dir, the etcd's --data-dir.
func labFlag(arg string) bool {
	switch arg {
	case "--subnet-file", "--state-dir", "--data-dir":
		return true
	}
	return false
}

// labProcess reports whether pid was started by the lab in dir: one of its
// arguments is a lab flag followed by a path under dir. A process that
// merely mentions the directory (an operator's `tail -f`) does not count.
func labProcess(pid int, dir string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	for i := 1; i < len(args); i++ {
		if labFlag(args[i-1]) && strings.HasPrefix(args[i], dir+"/") {
			return true
		}
	}
	return false
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, os.ErrClosed) && len(buf) == 0 {
		return ""
	}
	return strings.TrimSpace(string(buf))
}
