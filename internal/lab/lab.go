// Package lab builds a whole Weft cluster on one machine: hosts are
// network namespaces joined by an underlay bridge that lives in a
// namespace of its own, an embedded etcd runs on that underlay, one weftd
// runs in every host, and pods are namespaces attached to their host. It
// backs `weftctl lab` and the end-to-end tests.
//
// Nothing is created in the root namespace, and nothing in the root
// namespace ever connects to a lab address: the lab's etcd is reached
// through a unix socket it also listens on, and pings are sent from sockets
// opened inside pod namespaces.
//
// Layout of a lab named NAME:
//
//	namespaces  weft-NAME-ul          br0 198.18.0.1/24 (etcd), br1, ports h<i>
//	            weft-NAME-rt          router between segments (only if used)
//	            weft-NAME-out         eth0 198.18.0.253/24: the world outside
//	            weft-NAME-h<i>        eth0 198.18.<seg>.(10+i)/24, cni0, weftd
//	            weft-NAME-h<i>-p<j>   eth0 with an address from h<i>'s subnet
//	files       /run/weft/lab/NAME/   lab.json, etcd/, etcd.sock, etcd.log,
//	                                  h<i>/{subnet.env,state/,weftd.log,health.sock}
package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"github.com/weft-net/weft/internal/backends"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/netnsutil"
	"github.com/weft-net/weft/internal/store"
	"github.com/weft-net/weft/internal/subnetenv"
)

// Lab is a running lab. Its methods may be called from several goroutines.
type Lab struct {
	mu    sync.Mutex
	state State
	// exited holds, for processes this Lab started, a channel closed once
	// they are reaped.
	exited   map[int]<-chan struct{}
	attacher PodAttacher
}

// State returns a copy of the lab's state.
func (l *Lab) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.state
	s.Hosts = append([]HostState(nil), s.Hosts...)
	s.Pods = append([]PodState(nil), s.Pods...)
	return s
}

// Name returns the lab's name.
func (l *Lab) Name() string { return l.state.Name }

// Host returns host i (1-based).
func (l *Lab) Host(i int) (HostState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i < 1 || i > len(l.state.Hosts) {
		return HostState{}, fmt.Errorf("lab %s: no host %d (hosts are 1..%d)", l.state.Name, i, len(l.state.Hosts))
	}
	return l.state.Hosts[i-1], nil
}

// Pods returns the pods, host by host.
func (l *Lab) Pods() []PodState {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]PodState(nil), l.state.Pods...)
}

// Pod returns pod j (1-based) of host i.
func (l *Lab) Pod(host, j int) (PodState, error) {
	name := podName(host, j)
	for _, p := range l.Pods() {
		if p.Name == name {
			return p, nil
		}
	}
	return PodState{}, fmt.Errorf("lab %s: no pod %s", l.state.Name, name)
}

// RequireRoot returns an error unless the caller is root.
func RequireRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("lab: needs root (network namespaces, veths, bridges)")
	}
	return nil
}

// Exists reports whether anything of the named lab is left: its directory
// or any of its namespaces.
func Exists(name string) (bool, error) {
	if _, err := os.Stat(Dir(name)); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("lab: %w", err)
	}
	nss, err := listNamed(nsPrefix(name))
	return len(nss) > 0, err
}

// Up brings a lab up: underlay, etcd, one weftd per host, pods, and (unless
// spec.SkipReachability) waits until every pod reaches every other. On
// failure it removes everything it made and returns an error that quotes
// the logs of the processes that failed.
func Up(ctx context.Context, spec Spec) (l *Lab, err error) {
	if err := spec.normalize(); err != nil {
		return nil, err
	}
	// Refuse a bad network config or backend option before making anything.
	n, err := config.Parse(spec.networkConfig())
	if err != nil {
		return nil, fmt.Errorf("lab: network config: %w", err)
	}
	if err := backends.Validate(n); err != nil {
		return nil, fmt.Errorf("lab: network config: %w", err)
	}
	if err := RequireRoot(); err != nil {
		return nil, err
	}
	if err := resolveBinaries(&spec); err != nil {
		return nil, err
	}
	if spec.Attacher == nil {
		spec.Attacher = defaultAttacher(&spec) // CNI when the weft plugin is found (cni.go)
	}
	if exists, err := Exists(spec.Name); err != nil {
		return nil, err
	} else if exists {
		return nil, fmt.Errorf("lab %q exists already (remove it with `weftctl lab down --name %s`)", spec.Name, spec.Name)
	}
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	// Mkdir is the lock: of two concurrent Up calls for one name, one fails.
	if err := os.Mkdir(Dir(spec.Name), 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("lab %q exists already (remove it with `weftctl lab down --name %s`)", spec.Name, spec.Name)
		}
		return nil, fmt.Errorf("lab: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, Down(spec.Name))
			l = nil
		}
	}()
	l = &Lab{exited: map[int]<-chan struct{}{}, attacher: spec.Attacher}
	l.state = State{
		Name:         spec.Name,
		Etcd:         EtcdSocketURL(spec.Name),
		EtcdUnderlay: EtcdURL,
		Dir:          Dir(spec.Name),
		Spec:         spec,
	}
	for i := 1; i <= spec.Hosts; i++ {
		hd := filepath.Join(l.state.Dir, hostName(i))
		l.state.Hosts = append(l.state.Hosts, HostState{
			Index:        i,
			Name:         hostName(i),
			Netns:        hostNS(spec.Name, i),
			UnderlayIP:   spec.underlayIP(i).String(),
			Segment:      spec.segment(i),
			SubnetFile:   filepath.Join(hd, "subnet.env"),
			StateDir:     filepath.Join(hd, "state"),
			HealthSocket: filepath.Join(hd, "health.sock"),
			Log:          filepath.Join(hd, "weftd.log"),
		})
		if err := os.MkdirAll(filepath.Join(hd, "state"), 0o755); err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
	}
	if err := l.save(); err != nil {
		return nil, err
	}

	set := newNSSet()
	defer set.close()
	if err := buildUnderlay(&spec, set); err != nil {
		return nil, err
	}
	if err := buildOutside(&spec, set); err != nil {
		return nil, err
	}
	if err := l.startEtcd(ctx, set.ns[ulNS(spec.Name)]); err != nil {
		return nil, err
	}
	if err := l.writeConfig(ctx); err != nil {
		return nil, err
	}
	for i := 1; i <= spec.Hosts; i++ {
		if err := l.startAgent(i); err != nil {
			return nil, err
		}
	}
	if err := l.waitAgents(ctx); err != nil {
		return nil, err
	}
	if err := l.addPods(ctx); err != nil {
		return nil, err
	}
	if !spec.SkipReachability {
		rctx, cancel := context.WithTimeout(ctx, spec.ReadyTimeout)
		m, rerr := l.Reachability(rctx)
		cancel()
		if rerr != nil {
			return nil, rerr
		}
		if !m.All() {
			return nil, fmt.Errorf("lab %s: pods cannot reach each other after %s: %s%s", spec.Name, spec.ReadyTimeout, summarize(m.Missing(), 12), l.agentLogs(m.failingHosts(), 3))
		}
	}
	return l, nil
}

// Load returns the lab recorded under /run/weft/lab/<name>. Processes it
// did not start itself are stopped by signal and watched through /proc.
func Load(name string) (*Lab, error) {
	s, err := loadState(name)
	if err != nil {
		return nil, err
	}
	return &Lab{state: *s, exited: map[int]<-chan struct{}{}, attacher: BridgeAttacher{}}, nil
}

// Down stops every process of the lab and removes its namespaces and files.
// It works after a crash (from whatever is left), is idempotent, and
// succeeds quietly for a lab that does not exist.
func Down(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("lab: name %q: want 1-16 lower-case letters and digits, starting with a letter", name)
	}
	nss, err := listNamed(nsPrefix(name))
	if err != nil {
		return err
	}
	inodes := map[uint64]bool{}
	for _, n := range nss {
		if ino, err := nsInode(filepath.Join(NetnsDir, n)); err == nil {
			inodes[ino] = true
		}
	}
	var errs []error
	pids, err := procsIn(inodes, Dir(name))
	if err != nil {
		errs = append(errs, err)
	}
	if err := stopProcs(pids, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	// Pods first, then hosts, then the underlay: not required by the
	// kernel, but it keeps a half-finished Down easy to read.
	for i := len(nss) - 1; i >= 0; i-- {
		if err := netnsutil.Delete(nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(Dir(name)); err != nil {
		errs = append(errs, fmt.Errorf("lab: %w", err))
	}
	return errors.Join(errs...)
}

// List returns the names of the labs that have a directory under RunDir.
func List() ([]string, error) {
	ents, err := os.ReadDir(RunDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && nameRE.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Down stops and removes the lab (see [Down]).
func (l *Lab) Down() error { return Down(l.state.Name) }

func (l *Lab) save() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state.save()
}

// resolveBinaries finds weftctl (for the etcd) and weftd.
func resolveBinaries(spec *Spec) error {
	if spec.Weftctl == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("lab: cannot find weftctl: %w", err)
		}
		spec.Weftctl = exe
	}
	if spec.Weftd == "" {
		next := filepath.Join(filepath.Dir(spec.Weftctl), "weftd")
		if _, err := os.Stat(next); err == nil {
			spec.Weftd = next
		} else if p, err := exec.LookPath("weftd"); err == nil {
			spec.Weftd = p
		} else {
			return fmt.Errorf("lab: weftd not found next to %s nor on $PATH (build it with `go build -o bin/ ./cmd/...`, or pass --weftd)", spec.Weftctl)
		}
	}
	for _, p := range []*string{&spec.Weftctl, &spec.Weftd} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		if st, err := os.Stat(abs); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("lab: %s is not an executable file", abs)
		}
		*p = abs
	}
	return nil
}

// startEtcd runs `weftctl etcd` in the underlay namespace and waits until it
// answers on its unix socket.
func (l *Lab) startEtcd(ctx context.Context, ul netns.NsHandle) error {
	dir := l.state.Dir
	logPath := filepath.Join(dir, "etcd.log")
	argv := []string{l.state.Spec.Weftctl, "etcd",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", EtcdURL + "," + EtcdSocketURL(l.state.Name),
	}
	pid, exited, err := startIn(ul, argv, logPath)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.state.EtcdPID = pid
	l.exited[pid] = exited
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, l.state.Spec.ReadyTimeout)
	defer cancel()
	st, err := l.Store(wctx)
	if err != nil {
		return err
	}
	defer st.Close()
	err = poll(wctx, 50*time.Millisecond, func() (bool, error) {
		if !alive(pid) {
			return false, fmt.Errorf("lab %s: etcd exited:\n%s", l.state.Name, tail(logPath, 2000))
		}
		rctx, cancel := context.WithTimeout(wctx, time.Second)
		defer cancel()
		_, err := st.Client().Get(rctx, "health")
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("lab %s: etcd not ready: %w\n%s", l.state.Name, err, tail(logPath, 2000))
	}
	return nil
}

// Store connects to the lab's etcd through its unix socket. The caller
// closes it.
func (l *Lab) Store(ctx context.Context) (*store.Store, error) {
	st, err := store.New(ctx, store.Options{Endpoints: []string{EtcdSocketURL(l.state.Name)}})
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", l.state.Name, err)
	}
	return st, nil
}

// writeConfig writes the network config.
func (l *Lab) writeConfig(ctx context.Context) error {
	st, err := l.Store(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := st.SetConfig(wctx, l.state.Spec.networkConfig(), backends.Validate); err != nil {
		return fmt.Errorf("lab %s: network config: %w", l.state.Name, err)
	}
	return nil
}

// poll calls check every interval until it reports done, returns an error,
// or ctx is done.
func poll(ctx context.Context, interval time.Duration, check func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		done, err := check()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// signalAndWait sends sig to pid and waits until it has exited.
func (l *Lab) signalAndWait(ctx context.Context, pid int, sig syscall.Signal) error {
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("lab: signal %d: %w", pid, err)
	}
	l.mu.Lock()
	exited := l.exited[pid]
	l.mu.Unlock()
	if exited != nil {
		select {
		case <-exited:
			l.mu.Lock()
			delete(l.exited, pid)
			l.mu.Unlock()
			return nil
		case <-ctx.Done():
			return fmt.Errorf("lab: process %d did not exit: %w", pid, ctx.Err())
		}
	}
	return waitGone(ctx, []int{pid})
}

// addPods creates the pods of every host and attaches them.
func (l *Lab) addPods(ctx context.Context) error {
	spec := l.state.Spec
	for _, h := range l.State().Hosts {
		env, err := subnetenv.Read(h.SubnetFile)
		if err != nil {
			return fmt.Errorf("lab %s: host %s: %w", spec.Name, h.Name, err)
		}
		for j := 1; j <= spec.Pods; j++ {
			p := PodState{Name: podName(h.Index, j), Netns: podNS(spec.Name, h.Index, j), Host: h.Name, HostIndex: h.Index, Index: j}
			ns, err := netnsutil.Create(p.Netns)
			if err != nil {
				return err
			}
			ns.Close()
			addr, err := l.attacher.Attach(ctx, PodRequest{Lab: spec.Name, Dir: l.state.Dir, Host: h, Pod: p, Env: env})
			if err != nil {
				return fmt.Errorf("lab %s: pod %s: %w", spec.Name, p.Name, err)
			}
			p.IP = addr.String()
			l.mu.Lock()
			l.state.Pods = append(l.state.Pods, p)
			l.mu.Unlock()
		}
	}
	return l.save()
}

// Reachability pings every pod from every other until all answer or ctx is
// done, and returns the matrix.
func (l *Lab) Reachability(ctx context.Context) (*Matrix, error) {
	return reachability(ctx, l.Pods())
}

// Ping sends echo requests from pod (its name, e.g. "h1-p1") to dst until
// one is answered or ctx is done.
func (l *Lab) Ping(ctx context.Context, pod string, dst string) error {
	var ns string
	for _, p := range l.Pods() {
		if p.Name == pod {
			ns = p.Netns
		}
	}
	if ns == "" {
		return fmt.Errorf("lab %s: no pod %s", l.state.Name, pod)
	}
	a, err := parseAddr(dst)
	if err != nil {
		return err
	}
	return pingUntil(ctx, ns, a, 100*time.Millisecond)
}

// summarize joins the first n items and says how many more there are.
func summarize(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}
