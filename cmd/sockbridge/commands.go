package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/sockbridge/sockbridge/pkg/agent"
	"github.com/sockbridge/sockbridge/pkg/cgroups"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// usageError marks errors in the command line (exit code 2).
type usageError struct{ error }

func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "sockbridge",
		Short:         "Service-mesh sidecar traffic capture with eBPF instead of iptables",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newAgentCommand(), newUninstallCommand(), newMapsCommand(), newVersionCommand(), newProbeCommand())
	return root
}

// datapathFlags are the flags that say where the datapath lives.
type datapathFlags struct {
	cgroupRoot, cgroup string
	cfg                datapath.Config
}

func (f *datapathFlags) register(c *cobra.Command) {
	f.cfg = datapath.IstioDefaults()
	fl := c.Flags()
	fl.StringVar(&f.cgroupRoot, "cgroup-root", "", "cgroup v2 mount (default: detected from /proc/self/mountinfo)")
	fl.StringVar(&f.cgroup, "cgroup", "", "cgroup to attach to, absolute or relative to --cgroup-root (default: the cgroup v2 root)")
	fl.StringVar(&f.cfg.PinDir, "bpffs-dir", f.cfg.PinDir, "bpffs directory for pinned maps and links")
	fl.Uint32Var(&f.cfg.ProxyUID, "proxy-uid", f.cfg.ProxyUID, "uid of the sidecar, whose connections are not captured")
	fl.Uint32Var(&f.cfg.ProxyGID, "proxy-gid", f.cfg.ProxyGID, "gid of the sidecar")
	fl.Uint16Var(&f.cfg.OutboundPort, "outbound-port", f.cfg.OutboundPort, "sidecar port for captured outbound connections")
	fl.Uint16Var(&f.cfg.InboundPort, "inbound-port", f.cfg.InboundPort, "sidecar port for inbound connections")
	fl.BoolVar(&f.cfg.OutboundLoopbackOnly, "outbound-loopback-only", f.cfg.OutboundLoopbackOnly, "the sidecar's IPv6 outbound listener is on [::1] only: native IPv6 connections go there from ::1, not to the pod's IPv6 address (default: the preset's)")
	fl.Uint16Var(&f.cfg.DNSPort, "dns-port", f.cfg.DNSPort, "sidecar DNS proxy port on 127.0.0.1 and ::1 for captured DNS (0: no DNS capture)")
}

// applyPreset takes the sidecar identity and ports from the preset, except
// those given explicitly on the command line.
func (f *datapathFlags) applyPreset(c *cobra.Command, p *policy.Preset) {
	given := f.cfg
	f.cfg.ForPreset(p)
	fl := c.Flags()
	if fl.Changed("proxy-uid") {
		f.cfg.ProxyUID = given.ProxyUID
	}
	if fl.Changed("proxy-gid") {
		f.cfg.ProxyGID = given.ProxyGID
	}
	if fl.Changed("outbound-port") {
		f.cfg.OutboundPort = given.OutboundPort
	}
	if fl.Changed("inbound-port") {
		f.cfg.InboundPort = given.InboundPort
	}
	if fl.Changed("outbound-loopback-only") {
		f.cfg.OutboundLoopbackOnly = given.OutboundLoopbackOnly
	}
	if fl.Changed("dns-port") {
		f.cfg.DNSPort = given.DNSPort
	}
}

func (f *datapathFlags) resolve() error {
	if f.cgroupRoot == "" {
		root, err := cgroups.Root()
		if err != nil {
			return err
		}
		f.cgroupRoot = root
	}
	f.cfg.CgroupPath = f.cgroupRoot
	if f.cgroup != "" {
		f.cfg.CgroupPath = cgroups.Resolve(f.cgroupRoot, f.cgroup)
	}
	return nil
}

func newAgentCommand() *cobra.Command {
	var (
		dpf      datapathFlags
		podFile  string
		logLevel string
		cleanup  bool
		splice   string
		disable  []string
		mesh     string
		nodeName string
		kubecfg  string
		dns      dnsFlags
		metrics  string
		bpfStats bool
		syncWait time.Duration
	)
	c := &cobra.Command{
		Use:   "agent",
		Short: "Install the datapath and keep its pod map current until SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log := logrus.New()
			lvl, err := logrus.ParseLevel(logLevel)
			if err != nil {
				return usageError{fmt.Errorf("--log-level %q: want one of debug, info, warn, error", logLevel)}
			}
			log.SetLevel(lvl)
			if err := dpf.resolve(); err != nil {
				return err
			}
			if podFile == "" && nodeName == "" {
				return usageError{errors.New("no pod source: give --node-name (or $NODE_NAME) for Kubernetes, or --pods-file")}
			}
			if podFile != "" && nodeName != "" {
				return usageError{errors.New("--pods-file and --node-name exclude each other")}
			}
			spliceMode, err := agent.ParseSpliceMode(splice)
			if err != nil {
				return usageError{fmt.Errorf("--splice: %w", err)}
			}
			preset, err := policy.PresetByName(mesh)
			if err != nil {
				return usageError{fmt.Errorf("--mesh: %w", err)}
			}
			dpf.applyPreset(c, preset)
			if err := dpf.cfg.Validate(); err != nil {
				return usageError{err}
			}
			preset.MeshDNSCapture = dns.capture
			node, err := dns.node(log)
			if err != nil {
				return usageError{err}
			}
			return agent.Run(c.Context(), agent.Config{
				Datapath: dpf.cfg, CgroupRoot: dpf.cgroupRoot, PodFile: podFile,
				UninstallOnExit: cleanup, Splice: spliceMode, DisableFeatures: disable, Log: log,
				NodeName: nodeName, Kubeconfig: kubecfg, Preset: preset,
				DNSCaptureAll: dns.all, NodeDNS: node,
				MetricsAddr: metrics, SyncTimeout: syncWait, BPFStats: bpfStats,
			})
		},
	}
	dpf.register(c)
	c.Flags().StringVar(&podFile, "pods-file", "", "static pod list (JSON, see docs/pods-file.md); SIGHUP rereads it")
	c.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	c.Flags().BoolVar(&cleanup, "uninstall-on-exit", false, "remove the datapath when the agent stops (default: leave it attached)")
	c.Flags().StringVar(&splice, "splice", string(agent.SpliceAuto), "socket splicing: auto (on where the probe passes), on (required), off; off for sidecars that use splice(2)")
	c.Flags().StringArrayVar(&disable, "disable-feature", nil, "treat a probe feature as missing, e.g. sk_msg, to force it off (repeatable; names as sockbridge probe prints them)")
	c.Flags().StringVar(&nodeName, "node-name", os.Getenv("NODE_NAME"), "watch this node's pods through the Kubernetes API (default $NODE_NAME)")
	c.Flags().StringVar(&kubecfg, "kubeconfig", "", "kubeconfig file (default: in-cluster service account)")
	c.Flags().StringVar(&metrics, "metrics-addr", "", "serve /metrics, /healthz and /readyz on this address, e.g. :9090 (default: not served; the DaemonSet sets :9090)")
	c.Flags().BoolVar(&bpfStats, "bpf-stats", false, "have the kernel account BPF run time while the agent runs, for the run time metrics (costs tens of ns per program run)")
	c.Flags().DurationVar(&syncWait, "api-sync-timeout", 30*time.Second, "log what the agent cannot list when the first list of pods takes longer than this (it keeps waiting, not ready)")
	c.Flags().StringVar(&mesh, "mesh", "istio", "mesh preset: "+strings.Join(policy.PresetNames(), ", ")+" (sets proxy uid/gid and ports unless given)")
	dns.register(c)
	return c
}

func newUninstallCommand() *cobra.Command {
	pinDir := datapath.DefaultPinDir
	c := &cobra.Command{
		Use:   "uninstall",
		Short: "Detach every sockbridge program and remove its maps and pins",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := datapath.Uninstall(pinDir); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "removed the datapath pinned in %s\n", pinDir)
			return nil
		},
	}
	c.Flags().StringVar(&pinDir, "bpffs-dir", pinDir, "bpffs directory the agent pinned to")
	return c
}

func newMapsCommand() *cobra.Command {
	pinDir := datapath.DefaultPinDir
	c := &cobra.Command{
		Use:   "maps",
		Short: "Print the pinned pod map and counters as JSON",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			snap, err := datapath.ReadPinned(pinDir)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(c.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(snap)
		},
	}
	c.Flags().StringVar(&pinDir, "bpffs-dir", pinDir, "bpffs directory the agent pinned to")
	return c
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(c *cobra.Command, _ []string) {
			v := "devel"
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						v = s.Value
					}
				}
			}
			fmt.Fprintf(c.OutOrStdout(), "sockbridge %s (pinned layout v%d)\n", v, datapath.LayoutVersion)
		},
	}
}

// dnsFlags are the agent's DNS capture settings (docs/annotations.md,
// "DNS capture").
type dnsFlags struct {
	capture, all bool
	clusterDNS   []net.IP
	resolvConf   string
}

func (d *dnsFlags) register(c *cobra.Command) {
	fl := c.Flags()
	fl.BoolVar(&d.capture, "dns-capture", false, "capture the DNS of pods that do not say (Istio: meshConfig.defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE; a pod's sidecar env or proxy.istio.io/config wins)")
	fl.BoolVar(&d.all, "dns-capture-all", false, "capture every port-53 destination of the pods that capture DNS, not only their nameservers (istio-iptables --capture-all-dns, what istio-cni does)")
	fl.IPSliceVar(&d.clusterDNS, "cluster-dns", nil, "the kubelet's clusterDNS: the nameservers of dnsPolicy ClusterFirst pods (comma separated)")
	fl.StringVar(&d.resolvConf, "node-resolv-conf", "/etc/resolv.conf", "the node's resolv.conf the kubelet gives dnsPolicy Default pods (the kubelet's --resolv-conf; in a container, mount the node's); \"\" for none")
}

// node reads what the kubelet writes into its pods' resolv.conf. A missing
// node resolv.conf only leaves dnsPolicy Default pods without nameservers.
func (d *dnsFlags) node(log logrus.FieldLogger) (policy.NodeDNS, error) {
	var n policy.NodeDNS
	for _, ip := range d.clusterDNS {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return n, fmt.Errorf("--cluster-dns: %v is not an IP address", ip)
		}
		n.ClusterDNS = append(n.ClusterDNS, a.Unmap())
	}
	if d.resolvConf != "" {
		b, err := os.ReadFile(d.resolvConf)
		if err != nil {
			log.WithError(err).Warn("node resolv.conf unreadable: dnsPolicy Default pods get no DNS capture of their nameservers")
		}
		n.HostNameservers = policy.ParseResolvConf(b)
	}
	return n, nil
}
