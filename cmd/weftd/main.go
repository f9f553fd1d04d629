// Command weftd is Weft's per-host agent: it leases the host's subnet from
// etcd, writes subnet.env, and programs the datapath so that the host's pods
// reach every other host's pods. Flags mirror flanneld's; each can also be
// set in the environment as WEFTD_<FLAG> (upper case, dashes as
// underscores), the command line winning.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/internal/agent"
	"github.com/weft-net/weft/internal/store"
	"github.com/weft-net/weft/internal/subnetenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "weftd:", err)
		os.Exit(1)
	}
}

// defaultGCPercent is weftd's garbage-collection target unless GOGC is set:
// the heap may grow 25% beyond live data before a collection instead of
// Go's default 100%. weftd's steady allocation is small (its packet paths
// reuse their buffers), so this costs little CPU and keeps the memory of
// large lease updates from lingering: 5000 peers stay under 30 MB RSS.
const defaultGCPercent = 25

// flags are weftd's command-line settings.
type flags struct {
	agent       agent.Config
	etcd        store.Options
	endpoints   string
	healthzAddr string
	cleanup     bool
	logLevel    string
}

func parseFlags(args []string) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	fs.StringVar(&f.endpoints, "etcd-endpoints", "http://127.0.0.1:2379", "comma-separated etcd client URLs (http(s)://host:port or unix:///path)")
	fs.StringVar(&f.etcd.Prefix, "etcd-prefix", store.DefaultPrefix, "etcd key prefix of the network")
	fs.StringVar(&f.etcd.CAFile, "etcd-cafile", "", "CA bundle to verify etcd's certificate")
	fs.StringVar(&f.etcd.CertFile, "etcd-certfile", "", "client certificate for etcd")
	fs.StringVar(&f.etcd.KeyFile, "etcd-keyfile", "", "client key for etcd")
	fs.StringVar(&f.etcd.Username, "etcd-username", "", "etcd user name")
	fs.StringVar(&f.etcd.Password, "etcd-password", "", "etcd password")
	fs.StringVar(&f.agent.Iface, "iface", "", "underlay interface (name or address; default: the default route's interface)")
	fs.StringVar(&f.agent.PublicIP, "public-ip", "", "address published to peers (default: the interface's address)")
	fs.StringVar(&f.agent.SubnetFile, "subnet-file", subnetenv.DefaultPath, "where to write subnet.env")
	fs.StringVar(&f.agent.StateDir, "state-dir", "/var/lib/weft", "directory for state kept across restarts")
	fs.BoolVar(&f.agent.IPMasq, "ip-masq", false, "masquerade pod traffic that leaves the overlay network")
	fs.DurationVar(&f.agent.LeaseTTL, "subnet-lease-ttl", 24*time.Hour, "time to live of the subnet lease in etcd")
	fs.DurationVar(&f.agent.ResyncPeriod, "resync-period", 10*time.Second, "how often the datapath is compared with the desired state")
	fs.StringVar(&f.agent.BackendOverride, "backend-override", "", "JSON object merged over the config's Backend options on this host, e.g. {\"Mode\":\"reactive\"}")
	fs.StringVar(&f.healthzAddr, "healthz-addr", "", "serve /healthz and /readyz on HOST:PORT or unix:/path (off when empty)")
	fs.BoolVar(&f.cleanup, "cleanup", false, "remove Weft's masquerade rules and exit")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := applyEnv(fs); err != nil {
		return nil, err
	}
	f.etcd.Endpoints = strings.Split(f.endpoints, ",")

	if f.agent.ResyncPeriod <= 0 {
		return nil, errors.New("--resync-period must be positive")
	}
	if f.agent.LeaseTTL < 10*time.Second {
		return nil, errors.New("--subnet-lease-ttl must be at least 10s")
	}
	return f, nil
}

// applyEnv sets every flag not given on the command line from WEFTD_<FLAG>.
func applyEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	var errs []error
	fs.VisitAll(func(fl *flag.Flag) {
		if given[fl.Name] {
			return
		}
		env := "WEFTD_" + strings.ToUpper(strings.ReplaceAll(fl.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

func run(ctx context.Context, args []string) error {
	f, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(defaultGCPercent)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	f.etcd.Log = log

	masq := newMasquerader(log)
	if f.cleanup {
		return masq.Cleanup()
	}
	st, err := store.New(ctx, f.etcd)
	if err != nil {
		return err
	}
	defer st.Close()
	a := agent.New(f.agent, st, masq, log)
	if f.healthzAddr != "" {
		go func() {
			if err := a.ServeHealth(ctx, f.healthzAddr); err != nil {
				log.Error("health endpoint failed", "err", err)
			}
		}()
	}
	log.Info("weftd starting", "etcd", f.endpoints, "prefix", f.etcd.Prefix)
	return a.Run(ctx)
}
