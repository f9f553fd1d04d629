// Package e2e holds Weft's end-to-end tests: whole clusters built with
// internal/lab (network namespaces, a real etcd, real weftd processes, real
// kernel datapaths). They need root and skip without it.
//
// Shared helpers for every e2e file live here: TestMain builds weftd,
// weftctl and (if present) the weft CNI plugin once; upLab brings a lab up
// with a unique name and removes it when the test ends; inNS runs a client
// inside a lab namespace; parsePing reads ping's summary.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// binaries are the programs TestMain built, shared by every test in the
// package. Set once before any test runs, never written afterwards.
type binaries struct {
	dir     string
	weftd   string
	weftctl string
	weft    string // the CNI plugin; empty when cmd/weft has no main yet
	err     error  // why the build failed
}

var bin binaries

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() == 0 {
		cleanStaleLabs()
		dir, err := os.MkdirTemp("", "weft-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		bin = build(dir)
	}
	return m.Run()
}

// build compiles the commands into dir.
func build(dir string) binaries {
	b := binaries{dir: dir}
	root, err := moduleRoot()
	if err != nil {
		b.err = err
		return b
	}
	pkgs := []string{"./cmd/weftd", "./cmd/weftctl"}
	if hasMain(filepath.Join(root, "cmd", "weft")) {
		pkgs = append(pkgs, "./cmd/weft")
	}
	cmd := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		b.err = fmt.Errorf("go build %v: %w\n%s", pkgs, err, out)
		return b
	}
	b.weftd = filepath.Join(dir, "weftd")
	b.weftctl = filepath.Join(dir, "weftctl")
	if len(pkgs) == 3 {
		b.weft = filepath.Join(dir, "weft")
	}
	return b
}

// moduleRoot finds the directory holding go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the weft module")
	}
	return filepath.Dir(mod), nil
}

// hasMain reports whether dir holds a Go file of package main.
func hasMain(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err == nil && regexp.MustCompile(`(?m)^package main\b`).Match(b) {
			return true
		}
	}
	return false
}

// Test lab names are "t<pid>x<random>": the pid of the test process that
// made the lab, so that a later run can tell a lab of a dead run (remove
// it) from one of a run still going (leave it alone).
var testLabRE = regexp.MustCompile(`^t([0-9]+)x[a-z0-9]+$`)

// cleanStaleLabs removes the labs (and loose weft-t* namespaces) of test
// processes that no longer exist.
func cleanStaleLabs() {
	names := map[string]bool{}
	if ls, err := lab.List(); err == nil {
		for _, n := range ls {
			names[n] = true
		}
	}
	if ents, err := os.ReadDir(lab.NetnsDir); err == nil {
		for _, e := range ents {
			rest, ok := strings.CutPrefix(e.Name(), "weft-t")
			if !ok {
				continue
			}
			n, _, _ := strings.Cut(rest, "-")
			names["t"+n] = true
		}
	}
	for n := range names {
		m := testLabRE.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || processAlive(pid) {
			continue
		}
		if err := lab.Down(n); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: removing stale lab %s: %v\n", n, err)
		}
	}
}

// processAlive reports whether pid exists and is not a zombie (an exited
// process whose parent has not reaped it yet).
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// requireRoot skips the test unless it runs as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces, veths and bridges and runs weftd (run with sudo, as CI does)")
	}
}

// requireBinaries fails the test if TestMain could not build the commands.
func requireBinaries(t testing.TB) {
	t.Helper()
	requireRoot(t)
	if bin.err != nil {
		t.Fatalf("building the commands failed: %v", bin.err)
	}
}

// labName returns a unique lab name for this test process.
func labName() string {
	const alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	var b strings.Builder
	fmt.Fprintf(&b, "t%dx", os.Getpid())
	for b.Len() < 16 {
		b.WriteByte(alnum[rand.IntN(len(alnum))])
	}
	return b.String()
}

// upLab brings up a lab for the test with the built binaries (and a unique
// name unless spec.Name is set) and removes it when the test ends, checking
// that nothing of it is left.
func upLab(t testing.TB, spec lab.Spec) *lab.Lab {
	t.Helper()
	requireBinaries(t)
	if spec.Name == "" {
		spec.Name = labName()
	}
	if spec.Weftd == "" {
		spec.Weftd = bin.weftd
	}
	if spec.Weftctl == "" {
		spec.Weftctl = bin.weftctl
	}
	if spec.ReadyTimeout == 0 {
		spec.ReadyTimeout = 60 * time.Second
	}
	t.Cleanup(func() { downLab(t, spec.Name) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*spec.ReadyTimeout)
	defer cancel()
	l, err := lab.Up(ctx, spec)
	if err != nil {
		t.Fatalf("lab up %s: %v", spec.Name, err)
	}
	return l
}

// downLab removes a lab and checks that no namespace or directory is left.
func downLab(t testing.TB, name string) {
	t.Helper()
	if err := lab.Down(name); err != nil {
		t.Errorf("lab down %s: %v", name, err)
	}
	if left := labNamespaces(t, name); len(left) > 0 {
		t.Errorf("lab down %s left namespaces %v", name, left)
	}
	if _, err := os.Stat(lab.Dir(name)); err == nil {
		t.Errorf("lab down %s left %s", name, lab.Dir(name))
	}
}

// labNamespaces lists the named namespaces of a lab.
func labNamespaces(t testing.TB, name string) []string {
	t.Helper()
	ents, err := os.ReadDir(lab.NetnsDir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "weft-"+name+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// inNS runs a command inside a named namespace (`ip netns exec`) and
// returns its combined output.
func inNS(ctx context.Context, ns string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip netns exec %s %s: %w\n%s", ns, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// requireTool skips the test if a client program is missing (CI installs
// it through .ci/run).
func requireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s is not installed (apt-get install iputils-ping iperf3; .ci/run does)", name)
	}
}

// pingStats is ping's summary line.
type pingStats struct {
	Transmitted, Received int
}

// Lost returns how many echo requests went unanswered.
func (p pingStats) Lost() int { return p.Transmitted - p.Received }

var pingSummaryRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)

// parsePing reads the summary of iputils ping's output.
func parsePing(out string) (pingStats, error) {
	m := pingSummaryRE.FindStringSubmatch(out)
	if m == nil {
		return pingStats{}, fmt.Errorf("no ping summary in output:\n%s", out)
	}
	tx, _ := strconv.Atoi(m[1])
	rx, _ := strconv.Atoi(m[2])
	return pingStats{Transmitted: tx, Received: rx}, nil
}

// bgPing is a ping running in the background inside a namespace; it counts
// replies as they arrive.
type bgPing struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	out     strings.Builder
	replies int
	done    chan error
}

// startPing starts `ping args... dst` inside ns.
func startPing(t testing.TB, ns, dst string, args ...string) *bgPing {
	t.Helper()
	requireTool(t, "ping")
	argv := append([]string{"netns", "exec", ns, "ping"}, args...)
	argv = append(argv, dst)
	p := &bgPing{cmd: exec.Command("ip", argv...), done: make(chan error, 1)}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start ping: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "bytes from") {
				p.replies++
			}
			p.mu.Unlock()
		}
	}()
	go func() {
		err := p.cmd.Wait()
		pw.Close()
		p.done <- err
	}()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
		}
	})
	return p
}

// Replies returns how many replies ping has printed so far.
func (p *bgPing) Replies() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.replies
}

// Wait waits for ping to exit and returns its summary.
func (p *bgPing) Wait(ctx context.Context) (pingStats, string, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	// The reader goroutine may still hold the last lines: wait for the
	// summary to show up (it is written before ping exits).
	var out string
	_ = pollUntil(ctx, 5*time.Millisecond, func() bool {
		p.mu.Lock()
		out = p.out.String()
		p.mu.Unlock()
		return pingSummaryRE.MatchString(out)
	})
	st, err := parsePing(out)
	return st, out, err
}

// pollUntil calls cond every interval until it returns true (nil) or ctx
// is done (ctx's error).
func pollUntil(ctx context.Context, interval time.Duration, cond func() bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// eventually fails the test unless cond holds within timeout; it reports
// what it waited for and how long it took.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := pollUntil(ctx, 20*time.Millisecond, cond); err != nil {
		t.Fatalf("%s: not within %s", what, timeout)
	}
	return time.Since(start)
}

// iperfServer runs `iperf3 -s` inside ns until the test ends and returns
// once it listens.
func iperfServer(t testing.TB, ns string, port int) {
	t.Helper()
	requireTool(t, "iperf3")
	cmd := exec.Command("ip", "netns", "exec", ns, "iperf3", "-s", "-p", strconv.Itoa(port))
	if err := cmd.Start(); err != nil {
		t.Fatalf("iperf3 server in %s: %v", ns, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := pollUntil(ctx, 20*time.Millisecond, func() bool {
		out, err := inNS(ctx, ns, "ss", "-Hltn", "sport = :"+strconv.Itoa(port))
		return err == nil && strings.Contains(out, "LISTEN")
	})
	if err != nil {
		t.Fatalf("iperf3 server in %s not listening on %d", ns, port)
	}
}

// iperfGbps runs an iperf3 TCP client inside ns against dst for d and
// returns the receiver's throughput in Gbit/s. extra goes to the client
// (e.g. "-A", "0,1" to pin client and server to cores). A server still
// finishing the previous test answers "busy": the client tries again for
// up to 10 s.
func iperfGbps(t testing.TB, ns, dst string, port int, d time.Duration, extra ...string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	args := append([]string{"iperf3", "-c", dst, "-p", strconv.Itoa(port), "-t", strconv.Itoa(int(d.Seconds())), "-J"}, extra...)
	busyUntil := time.Now().Add(10 * time.Second)
	for {
		out, err := inNS(ctx, ns, args...)
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
			Error string `json:"error"`
		}
		if jerr := json.Unmarshal([]byte(out), &res); jerr != nil {
			t.Fatalf("iperf3 %s -> %s: %v (JSON: %v)\n%s", ns, dst, err, jerr, out)
		}
		if strings.Contains(res.Error, "busy") && time.Now().Before(busyUntil) {
			time.Sleep(50 * time.Millisecond) // the server offers no event to wait for
			continue
		}
		if err != nil || res.Error != "" || res.End.SumReceived.BitsPerSecond <= 0 {
			t.Fatalf("iperf3 %s -> %s: %v %s (%.0f bit/s)", ns, dst, err, res.Error, res.End.SumReceived.BitsPerSecond)
		}
		return res.End.SumReceived.BitsPerSecond / 1e9
	}
}

// median returns the median of xs (left unchanged).
func median(xs []float64) float64 {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// benchLab is upLab for benchmarks.
func benchLab(b *testing.B, spec lab.Spec) *lab.Lab {
	b.Helper()
	requireRoot(b)
	if bin.err != nil {
		b.Fatalf("building the commands failed: %v", bin.err)
	}
	spec.Name = labName()
	spec.Weftd, spec.Weftctl = bin.weftd, bin.weftctl
	spec.ReadyTimeout = 60 * time.Second
	b.Cleanup(func() {
		if err := lab.Down(spec.Name); err != nil {
			b.Errorf("lab down %s: %v", spec.Name, err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*spec.ReadyTimeout)
	defer cancel()
	l, err := lab.Up(ctx, spec)
	if err != nil {
		b.Fatalf("lab up %s: %v", spec.Name, err)
	}
	return l
}
