package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/weft-net/weft/internal/lab"
)

// newLabCmd is `weftctl lab`: a whole Weft cluster in network namespaces on
// this machine.
func newLabCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a whole Weft cluster on this machine, in network namespaces",
		Long: `A lab is a cluster on one machine: hosts are network namespaces joined by an
underlay bridge (198.18.0.0/24) that lives in a namespace of its own, with an
embedded etcd at 198.18.0.1 (also on a unix socket under /run/weft/lab/NAME),
one weftd per host and pods attached to each host's cni0 bridge. Nothing is
added to the root namespace. Needs root.`,
	}
	cmd.AddCommand(newLabUpCmd(), newLabStatusCmd(), newLabDownCmd(), newLabRestartCmd(), newLabEnvCmd())
	return cmd
}

func newLabUpCmd() *cobra.Command {
	var (
		spec          lab.Spec
		backendConfig string
		remote        []int
		weftdArgs     []string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Create a lab and wait until every pod reaches every other pod",
		Example: `  weftctl lab up --name demo --hosts 3 --pods 2 --backend vxlan
  weftctl lab up --name gw --hosts 4 --backend host-gw --remote-hosts 4
  weftctl lab up --name r --backend vxlan --weftd-arg '2=--backend-override={"Mode":"reactive"}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if backendConfig != "" {
				if !json.Valid([]byte(backendConfig)) {
					return fmt.Errorf("--backend-config: not valid JSON: %s", backendConfig)
				}
				spec.BackendConfig = json.RawMessage(backendConfig)
			}
			if len(remote) > 0 {
				spec.Segments = map[int]int{}
				for _, h := range remote {
					spec.Segments[h] = 1
				}
			}
			for _, a := range weftdArgs {
				hs, arg, ok := strings.Cut(a, "=")
				h, err := strconv.Atoi(hs)
				if !ok || err != nil {
					return fmt.Errorf("--weftd-arg %q: want HOST=ARG, e.g. 2=--ip-masq", a)
				}
				if spec.HostArgs == nil {
					spec.HostArgs = map[int][]string{}
				}
				spec.HostArgs[h] = append(spec.HostArgs[h], arg)
			}
			start := time.Now()
			l, err := lab.Up(cmd.Context(), spec)
			if err != nil {
				return err
			}
			var m *lab.Matrix
			if !spec.SkipReachability {
				ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
				m, err = l.Reachability(ctx)
				cancel()
				if err != nil {
					return err
				}
			}
			st := l.State()
			if err := st.WriteTable(cmd.OutOrStdout(), m); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s is up (%s). Try: ip netns exec %s ping -c 3 %s\nRemove it with: weftctl lab down --name %s\n",
				st.Name, time.Since(start).Round(time.Millisecond), firstPodNS(st), lastPodIP(st), st.Name)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.Name, "name", "", "lab name: 1-16 lower-case letters and digits (required)")
	f.IntVar(&spec.Hosts, "hosts", 3, "number of hosts")
	f.IntVar(&spec.Pods, "pods", 2, "pods per host")
	f.StringVar(&spec.Backend, "backend", "vxlan", "backend type: vxlan, host-gw, udp")
	f.StringVar(&backendConfig, "backend-config", "", `the network config's whole Backend object, e.g. '{"Type":"vxlan","VNI":4}'`)
	f.StringVar(&spec.Network, "network", lab.DefaultNetwork, "overlay network")
	f.DurationVar(&spec.ResyncPeriod, "resync-period", lab.DefaultResyncPeriod, "weftd --resync-period")
	f.IntVar(&spec.UnderlayMTU, "underlay-mtu", 1500, "MTU of the underlay links")
	f.StringVar(&spec.UnderlayNeighbours, "underlay-neighbours", "auto", "how hosts resolve underlay addresses: arp, static (permanent entries), or auto (static only for labs too big for the kernel's shared ARP table)")
	f.IntSliceVar(&remote, "remote-hosts", nil, "hosts placed on a second underlay segment (198.18.1.0/24) behind a router")
	f.StringArrayVar(&weftdArgs, "weftd-arg", nil, "extra weftd flag for one host, HOST=ARG (repeatable)")
	f.StringVar(&spec.Weftd, "weftd", "", "weftd binary (default: next to weftctl, then $PATH)")
	f.DurationVar(&spec.ReadyTimeout, "timeout", lab.DefaultReadyTimeout, "how long to wait for each stage")
	f.BoolVar(&spec.SkipReachability, "no-wait", false, "return once the pods exist, without the all-pairs ping")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func firstPodNS(s lab.State) string {
	if len(s.Pods) == 0 {
		return "weft-" + s.Name + "-h1"
	}
	return s.Pods[0].Netns
}

func lastPodIP(s lab.State) string {
	if len(s.Pods) == 0 {
		return s.Hosts[len(s.Hosts)-1].UnderlayIP
	}
	return s.Pods[len(s.Pods)-1].IP
}

func newLabStatusCmd() *cobra.Command {
	var (
		name         string
		asJSON, ping bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a lab's hosts, subnets, weftd processes and pods (without --name: list the labs)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return listLabs(cmd)
			}
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			st := l.State()
			if asJSON {
				return st.WriteJSON(cmd.OutOrStdout())
			}
			var m *lab.Matrix
			if ping {
				ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
				m, err = l.Reachability(ctx)
				cancel()
				if err != nil {
					return err
				}
			}
			return st.WriteTable(cmd.OutOrStdout(), m)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "lab name")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&ping, "ping", false, "also ping every pod from every other and print the matrix")
	return cmd
}

// listLabs prints one line per lab.
func listLabs(cmd *cobra.Command) error {
	names, err := lab.List()
	if err != nil {
		return err
	}
	if len(names) == 0 {
		fmt.Fprintln(cmd.OutOrStdout(), "no labs")
		return nil
	}
	for _, n := range names {
		l, err := lab.Load(n)
		if err != nil {
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t(broken: %v; remove it with weftctl lab down --name %s)\n", n, err, n)
			continue
		}
		st := l.State()
		fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%d hosts\t%d pods\n", st.Name, st.Spec.Backend, len(st.Hosts), len(st.Pods))
	}
	return nil
}

func newLabEnvCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:     "env",
		Short:   "Print the environment that points weftctl at a lab's etcd (through its unix socket)",
		Example: `  eval "$(weftctl lab env --name demo)"; weftctl leases list`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "export WEFTCTL_ETCD_ENDPOINTS=%s\n", l.State().Etcd)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "lab name (required)")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func newLabDownCmd() *cobra.Command {
	var (
		name string
		all  bool
	)
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop a lab's processes and remove its namespaces and files (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.RequireRoot(); err != nil {
				return err
			}
			if all == (name != "") {
				return errors.New("give exactly one of --name and --all")
			}
			names := []string{name}
			if all {
				var err error
				if names, err = lab.List(); err != nil {
					return err
				}
			}
			var errs []error
			for _, n := range names {
				if err := lab.Down(n); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "lab %s is down: no process, namespace or file of it is left\n", n)
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "lab name")
	cmd.Flags().BoolVar(&all, "all", false, "remove every lab that has a directory under "+lab.RunDir)
	return cmd
}

func newLabRestartCmd() *cobra.Command {
	var (
		name string
		host int
		sig  string
	)
	cmd := &cobra.Command{
		Use:   "restart",
		Short: "Stop a lab's weftd (one host, or all) with a signal and start it again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var s syscall.Signal
			switch strings.TrimPrefix(strings.ToUpper(sig), "SIG") {
			case "TERM":
				s = syscall.SIGTERM
			case "KILL":
				s = syscall.SIGKILL
			case "INT":
				s = syscall.SIGINT
			default:
				return fmt.Errorf("--signal %q: want TERM, INT or KILL", sig)
			}
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			hosts := []int{host}
			if host == 0 {
				hosts = nil
				for _, h := range l.State().Hosts {
					hosts = append(hosts, h.Index)
				}
			}
			for _, h := range hosts {
				start := time.Now()
				if err := l.RestartAgent(cmd.Context(), h, s); err != nil {
					return err
				}
				hs, _ := l.Host(h)
				fmt.Fprintf(cmd.OutOrStdout(), "%s: weftd restarted (pid %d), ready after %s\n", hs.Name, hs.PID, time.Since(start).Round(time.Millisecond))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "lab name (required)")
	cmd.Flags().IntVar(&host, "host", 0, "host number (default: every host)")
	cmd.Flags().StringVar(&sig, "signal", "TERM", "signal that stops weftd: TERM, INT or KILL")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}
