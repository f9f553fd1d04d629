package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/internal/subnetenv"
)

// newDockerOptsCmd prints Docker daemon options derived from subnet.env, for
// hosts that run plain Docker with its docker0 bridge instead of CNI: the
// bridge gets the host's subnet (--bip), pods the overlay's MTU (--mtu), and
// Docker masquerades only when weftd does not (--ip-masq), as flannel's
// mk-docker-opts.sh.
func newDockerOptsCmd() *cobra.Command {
	var subnetFile, format, key, output string
	cmd := &cobra.Command{
		Use:   "docker-opts",
		Short: "Print Docker daemon options (--bip, --mtu, --ip-masq) from subnet.env",
		Long: `docker-opts reads the subnet.env that weftd writes and prints the options
that make Docker's docker0 bridge use this host's Weft subnet.

--format env prints shell variables for a systemd EnvironmentFile, as
flannel's mk-docker-opts.sh does:

  DOCKER_OPT_BIP="--bip=10.244.7.1/24"
  DOCKER_OPT_IPMASQ="--ip-masq=false"
  DOCKER_OPT_MTU="--mtu=1450"
  DOCKER_OPTS=" --bip=10.244.7.1/24 --ip-masq=false --mtu=1450"

--format args prints the options alone, on one line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env, err := subnetenv.Read(subnetFile)
			if err != nil {
				return err
			}
			var text string
			switch format {
			case "env":
				text = dockerOptsEnv(env, key)
			case "args":
				text = dockerOptsArgs(env) + "\n"
			default:
				return fmt.Errorf("--format: %q is not env or args", format)
			}
			if output == "" || output == "-" {
				_, err = io.WriteString(cmd.OutOrStdout(), text)
				return err
			}
			return writeFileAtomic(output, []byte(text))
		},
	}
	f := cmd.Flags()
	f.StringVar(&subnetFile, "subnet-file", subnetenv.DefaultPath, "subnet.env written by weftd")
	f.StringVar(&format, "format", "env", "output format: env (shell variables) or args (options on one line)")
	f.StringVar(&key, "key", "DOCKER_OPTS", "name of the combined variable in --format env")
	f.StringVarP(&output, "output", "o", "-", "write to this file (atomically) instead of stdout")
	return cmd
}

// dockerOpt is one option with the name of its variable in --format env.
type dockerOpt struct{ name, value string }

// dockerOpts returns --bip, --ip-masq and --mtu (when subnet.env has one)
// for env. Docker masquerades only when weftd does not.
func dockerOpts(env subnetenv.Env) []dockerOpt {
	o := []dockerOpt{
		{"DOCKER_OPT_BIP", "--bip=" + env.Subnet.String()},
		{"DOCKER_OPT_IPMASQ", fmt.Sprintf("--ip-masq=%t", !env.IPMasq)},
	}
	if env.MTU > 0 {
		o = append(o, dockerOpt{"DOCKER_OPT_MTU", fmt.Sprintf("--mtu=%d", env.MTU)})
	}
	return o
}

func dockerOptsArgs(env subnetenv.Env) string {
	var vals []string
	for _, o := range dockerOpts(env) {
		vals = append(vals, o.value)
	}
	return strings.Join(vals, " ")
}

func dockerOptsEnv(env subnetenv.Env, key string) string {
	var b strings.Builder
	for _, o := range dockerOpts(env) {
		fmt.Fprintf(&b, "%s=%q\n", o.name, o.value)
	}
	fmt.Fprintf(&b, "%s=%q\n", key, " "+dockerOptsArgs(env))
	return b.String()
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(data)
	if err := tmp.Chmod(0o644); err != nil && werr == nil {
		werr = err
	}
	if err := tmp.Close(); err != nil && werr == nil {
		werr = err
	}
	if werr != nil {
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return os.Rename(tmp.Name(), path)
}
