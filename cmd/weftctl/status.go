package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/weft-net/weft/internal/subnetenv"
)

func newStatusCmd(g *etcdFlags) *cobra.Command {
	var subnetFile, healthz string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Diagnose this host: subnet.env, weftd's readiness, and its lease in etcd",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			var problems []error
			env, err := subnetenv.Read(subnetFile)
			if err != nil {
				problems = append(problems, err)
				fmt.Fprintf(out, "subnet.env   %v\n", err)
			} else {
				fmt.Fprintf(out, "subnet.env   %s: network %s, subnet %s, mtu %d, ip-masq %t\n", subnetFile, env.Network, env.Subnet, env.MTU, env.IPMasq)
			}
			if healthz != "" {
				state, err := readyz(cmd.Context(), healthz)
				if err != nil {
					problems = append(problems, fmt.Errorf("weftd at %s: %w", healthz, err))
				}
				fmt.Fprintf(out, "weftd        %s: %s\n", healthz, state)
			}
			s, err := g.open(cmd.Context())
			if err != nil {
				return errors.Join(append(problems, err)...)
			}
			defer s.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			leases, err := s.Leases(ctx)
			if err != nil {
				problems = append(problems, err)
				fmt.Fprintf(out, "etcd         %s: %v\n", g.endpoints, err)
				return errors.Join(problems...)
			}
			fmt.Fprintf(out, "etcd         %s: %d leases under %s\n", g.endpoints, len(leases), s.SubnetsPrefix())
			if env.Subnet.IsValid() {
				found := false
				for _, l := range leases {
					if l.Subnet == env.HostSubnet() {
						found = true
						kind := "lease"
						if l.Reserved() {
							kind = "reservation"
						}
						fmt.Fprintf(out, "this host    %s %s of %s (backend %q)\n", kind, l.Subnet, l.Attrs.PublicIP, l.Attrs.BackendType)
					}
				}
				if !found {
					problems = append(problems, fmt.Errorf("no lease in etcd for this host's subnet %s: weftd is not running or lost its lease", env.HostSubnet()))
					fmt.Fprintf(out, "this host    no lease for %s in etcd\n", env.HostSubnet())
				}
			}
			return errors.Join(problems...)
		},
	}
	cmd.Flags().StringVar(&subnetFile, "subnet-file", subnetenv.DefaultPath, "weftd's subnet.env")
	cmd.Flags().StringVar(&healthz, "healthz-addr", "", "weftd's --healthz-addr (HOST:PORT or unix:/path) to ask for readiness")
	return cmd
}

// readyz asks weftd's health endpoint whether it is ready.
func readyz(ctx context.Context, addr string) (string, error) {
	client := &http.Client{Timeout: 3 * time.Second}
	url := "http://" + addr + "/readyz"
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
		url = "http://weftd/readyz"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "unreachable", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "unreachable", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	text := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return text, errors.New(text)
	}
	return text, nil
}
