// Package agent runs the node agent: it installs (or adopts) the datapath,
// keeps the pod map in step with its pod source, and leaves the datapath
// in place when it stops so that traffic keeps flowing across restarts.
package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"

	"github.com/sockbridge/sockbridge/pkg/controller"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/inbound"
	"github.com/sockbridge/sockbridge/pkg/podfile"
	"github.com/sockbridge/sockbridge/pkg/policy"
	"github.com/sockbridge/sockbridge/pkg/probe"
)

// SpliceMode says whether the agent splices captured flows.
type SpliceMode string

// The splice modes.
const (
	SpliceAuto SpliceMode = "auto" // on when the probe passes every splice feature
	SpliceOn   SpliceMode = "on"   // required: the agent refuses to start without it
	SpliceOff  SpliceMode = "off"
)

// ParseSpliceMode returns the mode named s.
func ParseSpliceMode(s string) (SpliceMode, error) {
	switch m := SpliceMode(s); m {
	case SpliceAuto, SpliceOn, SpliceOff:
		return m, nil
	}
	return "", fmt.Errorf("splice mode %q: want auto, on or off", s)
}

// Config is the agent's configuration.
type Config struct {
	Datapath datapath.Config
	// CgroupRoot is the cgroup v2 mount pod cgroup paths are relative to.
	CgroupRoot string
	// PodFile is a static pod list (podfile format); SIGHUP rereads it.
	// Exclusive with NodeName.
	PodFile string
	// NodeName, when set, runs the Kubernetes controller on this node's
	// pods (the downward API's spec.nodeName).
	NodeName string
	// Kubeconfig is the API server credentials file; "" means in-cluster.
	Kubeconfig string
	// Preset is the mesh whose pods the controller captures.
	Preset *policy.Preset
	// UninstallOnExit removes the datapath when the agent stops.
	UninstallOnExit bool
	// Splice is SpliceAuto (the zero value means it too), SpliceOn or
	// SpliceOff.
	Splice SpliceMode
	// DisableFeatures are probe features to treat as missing, to force a
	// feature off (e.g. "sk_msg" turns splicing off).
	DisableFeatures []string
	// DNSCaptureAll captures every port-53 destination of the pods that
	// capture DNS, not only their nameservers (istio-iptables
	// --capture-all-dns; istio-cni's behaviour). The mesh-wide DNS capture
	// default is Preset.MeshDNSCapture.
	DNSCaptureAll bool
	// NodeDNS is what this node's kubelet writes into pods' resolv.conf
	// (--cluster-dns, --node-resolv-conf).
	NodeDNS policy.NodeDNS
	// MetricsAddr is where /metrics, /healthz and /readyz are served
	// (host:port; ":0" picks a port, logged at start); "" serves nothing.
	MetricsAddr string
	// BPFStats makes the kernel account the run time of BPF programs
	// while the agent runs (BPF_ENABLE_STATS, kernel 5.8; a few tens of
	// nanoseconds per program run), for the run time metrics. Without it
	// they are exported only when kernel.bpf_stats_enabled is 1.
	BPFStats bool
	// SyncTimeout is how long the controller waits for its first list of
	// pods before it logs what it cannot list; 0 means 30 s.
	SyncTimeout time.Duration
	Log         *logrus.Logger
}

// Plan probes the kernel and decides what the agent enables: the probe's
// plan, minus the features turned off, with the probe's report. It fails
// with the probe's one-line reason when an essential is missing.
func Plan(ctx context.Context, cfg Config) (*probe.Report, probe.Plan, error) {
	report, err := probe.Run(ctx, probe.Options{CgroupRoot: cfg.CgroupRoot, BPFFS: cfg.Datapath.PinDir})
	if err != nil {
		return nil, probe.Plan{}, fmt.Errorf("probe the kernel: %w", err)
	}
	plan, err := planFor(report, cfg)
	return report, plan, err
}

// planFor is Plan on a report already taken.
func planFor(report *probe.Report, cfg Config) (probe.Plan, error) {
	for _, name := range cfg.DisableFeatures {
		if _, ok := report.Feature(name); !ok {
			return probe.Plan{}, fmt.Errorf("feature %q to turn off: no such feature (`sockbridge probe` lists them)", name)
		}
		if err := probe.CanTurnOff(name); err != nil {
			return probe.Plan{}, err
		}
	}
	report = report.Without(cfg.DisableFeatures...)
	if err := report.Err(); err != nil {
		return probe.Plan{}, err
	}
	plan := report.Plan()
	switch cfg.Splice {
	case SpliceAuto, "":
	case SpliceOn:
		if !plan.Splice {
			return plan, fmt.Errorf("splicing is required but %s", strings.Join(plan.Reasons, "; "))
		}
	case SpliceOff:
		if plan.Splice {
			plan.Splice = false
			plan.Reasons = append(plan.Reasons, "splice: off on request")
		}
	default:
		return plan, fmt.Errorf("splice mode %q: want auto, on or off", cfg.Splice)
	}
	return plan, nil
}

// Run probes the kernel, installs the datapath the plan allows and serves
// until ctx ends. With cfg.MetricsAddr it serves /healthz from the start
// and /readyz, which passes once the datapath is loaded and the pod map
// reconciled with the pod source (the informer synced, or the pod file
// read).
func Run(ctx context.Context, cfg Config) (err error) {
	log := cfg.Log
	if cfg.PodFile != "" && cfg.NodeName != "" {
		return errors.New("a pod file and a node name exclude each other: take pods from one source")
	}
	if cfg.PodFile == "" && cfg.NodeName == "" {
		return errors.New("no pod source: give a pod file or a node name")
	}
	ready := newReadiness()
	reg := newRegistry()
	if cfg.MetricsAddr != "" {
		sctx, stop := context.WithCancel(ctx)
		addr, wait, err := serve(sctx, cfg.MetricsAddr, ready.handler(reg), log)
		if err != nil {
			stop()
			return err
		}
		defer func() { stop(); wait() }()
		log.WithField("addr", addr.String()).Info("serving /metrics, /healthz and /readyz")
	}
	// The API client first: a bad kubeconfig must fail before anything is
	// loaded or pinned.
	var client kubernetes.Interface
	if cfg.NodeName != "" {
		if client, err = controller.NewClient(cfg.Kubeconfig, "sockbridge-agent/"+cfg.NodeName); err != nil {
			return err
		}
	}
	// A pinned layout this agent cannot take over (a newer one: a
	// downgrade) is refused before the probe, and before anything is
	// touched.
	if err := datapath.CheckLayout(cfg.Datapath.PinDir); err != nil {
		return err
	}
	report, plan, err := Plan(ctx, cfg)
	if err != nil {
		return err
	}
	if err := registerProbe(reg, report, plan); err != nil {
		return fmt.Errorf("register probe metrics: %w", err)
	}
	for _, line := range plan.Lines() {
		log.Info("plan: " + line)
	}
	cfg.Datapath.Splice = plan.Splice
	cfg.Datapath.IPv4Only = !plan.IPv6
	cfg.Datapath.Inbound = plan.Inbound
	cfg.Datapath.NoDNS = !plan.DNS
	cfg.Datapath.Log = log
	dp, err := datapath.Load(cfg.Datapath)
	if err != nil {
		return err
	}
	defer func() {
		err = errors.Join(err, dp.Close())
		if cfg.UninstallOnExit {
			err = errors.Join(err, datapath.Uninstall(cfg.Datapath.PinDir))
			log.Info("datapath uninstalled")
		}
	}()
	if dp.SwitchPending() {
		ready.set(checkDatapath, "loaded over pinned layout 1, whose programs capture until the pods are synced and the hooks switch")
	} else {
		ready.set(checkDatapath, "")
	}
	statsHeld := false
	if cfg.BPFStats {
		stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			log.WithError(err).Warn("cannot turn on BPF run time statistics")
		} else {
			defer stats.Close()
			statsHeld = true
		}
	}
	if err := reg.Register(newDatapathCollector(dp, statsHeld, log)); err != nil {
		return fmt.Errorf("register datapath metrics: %w", err)
	}
	log.WithFields(logrus.Fields{
		"cgroup": cfg.Datapath.CgroupPath, "pins": cfg.Datapath.PinDir,
		"outbound_port": cfg.Datapath.OutboundPort, "inbound_port": cfg.Datapath.InboundPort,
		"proxy_uid": cfg.Datapath.ProxyUID, "splice": cfg.Datapath.Splice, "inbound": cfg.Datapath.Inbound,
		"dns_port": cfg.Datapath.DNSPort, "dns": !cfg.Datapath.NoDNS, "outbound_loopback_only": cfg.Datapath.OutboundLoopbackOnly,
	}).Info("datapath ready")

	// The pod map as the pod sources drive it: with inbound capture on,
	// every change also reaches the reconciler that attaches sk_lookup to
	// each pod's network namespace.
	var pods inbound.PodMap = dp
	if plan.Inbound {
		r := inbound.New(dp, log)
		pods = inbound.Tracking{PodMap: dp, R: r}
		ready.follow(checkInbound, r.NotReady)
		rctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { r.Run(rctx); close(done) }()
		defer func() { stop(); <-done }()
	}
	if dp.SwitchPending() {
		pods = &switchOnSync{PodMap: pods, dp: dp, ready: ready, log: log}
	}
	if dp.LegacyInUse() {
		lctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { dropLegacy(lctx, dp, legacyCheckInterval, log); close(done) }()
		defer func() { stop(); <-done }()
	}

	dnsOff := dnsOffReason(plan, cfg)
	if cfg.NodeName != "" {
		return runController(ctx, cfg, client, pods, ready, reg, inboundOff(plan), dnsOff)
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	pf := &podFileSource{cfg: cfg, dp: pods, ready: ready, dnsOff: dnsOff}
	if err := reg.Register(newPodStates(pf.states)); err != nil {
		return fmt.Errorf("register pod metrics: %w", err)
	}
	pf.sync()
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping; the datapath stays attached")
			return nil
		case <-hup:
			pf.sync()
		}
	}
}

// switchOnSync switches the hooks of a datapath loaded over pinned layout
// 1 (datapath.Switch) after the first pod sync without an error: the
// earlier agent's programs keep capturing until this agent's pod map holds
// every pod, and a pod that could not be written is not dropped from
// capture by the switch. A failed switch is retried at the next sync (the
// controller's resync, a SIGHUP for the pod file).
type switchOnSync struct {
	inbound.PodMap
	dp    *datapath.Datapath
	ready *readiness
	log   *logrus.Logger

	mu   sync.Mutex
	done bool
}

// SyncPods syncs the pod map, then switches once.
func (s *switchOnSync) SyncPods(pods []policy.Pod) error {
	if err := s.PodMap.SyncPods(pods); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return nil
	}
	if err := s.dp.Switch(); err != nil {
		s.ready.set(checkDatapath, "switch from pinned layout 1: "+err.Error())
		return fmt.Errorf("switch the hooks from pinned layout 1: %w", err)
	}
	s.done = true
	s.ready.set(checkDatapath, "")
	return nil
}

// legacyCheckInterval is how often the agent looks whether a socket layout
// 1 captured is still open.
const legacyCheckInterval = time.Minute

// dropLegacy removes layout 1's maps kept for the connections it captured
// once none is left (datapath.DropLegacy), looking every interval.
func dropLegacy(ctx context.Context, dp *datapath.Datapath, interval time.Duration, log *logrus.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		dropped, err := dp.DropLegacy()
		if err != nil {
			log.WithError(err).Warn("cannot tell whether connections captured by pinned layout 1 are still open; its maps stay pinned")
			continue
		}
		if dropped {
			log.Info("no connection captured by pinned layout 1 is left: its maps are unpinned")
			return
		}
	}
}

// runController keeps the datapath equal to this node's pods until ctx
// ends.
func runController(ctx context.Context, cfg Config, client kubernetes.Interface, dp inbound.PodMap, ready *readiness, reg prometheus.Registerer, degraded []controller.Degraded, dnsOff string) error {
	cfg.Log.WithFields(logrus.Fields{"node": cfg.NodeName, "mesh": cfg.Preset.Name}).Info("watching this node's pods")
	c, err := controller.New(controller.Config{
		Client: client, NodeName: cfg.NodeName, Preset: cfg.Preset,
		// Pod cgroups are searched below the attach point: pods outside
		// it could never be captured.
		CgroupRoot: cfg.Datapath.CgroupPath, Datapath: dp, Log: cfg.Log,
		SyncTimeout: cfg.SyncTimeout, Registerer: reg,
		Degraded: degraded,
		DNS:      controller.DNSConfig{Off: dnsOff, All: cfg.DNSCaptureAll, Node: cfg.NodeDNS},
	})
	if err != nil {
		return fmt.Errorf("pod controller: %w", err)
	}
	ready.follow(checkPods, c.NotReady)
	if err := reg.Register(newPodStates(c.PodStates)); err != nil {
		return fmt.Errorf("register pod metrics: %w", err)
	}
	if err := c.Run(ctx); err != nil {
		return fmt.Errorf("pod controller: %w", err)
	}
	cfg.Log.Info("stopping; the datapath stays attached")
	return nil
}

// inboundOff is what the controller tells pods that want inbound capture
// when the plan has it off.
func inboundOff(plan probe.Plan) []controller.Degraded {
	if plan.Inbound {
		return nil
	}
	reason := "the kernel cannot capture inbound connections"
	for _, r := range plan.Reasons {
		if strings.HasPrefix(r, "inbound: ") {
			reason = strings.TrimPrefix(r, "inbound: ")
		}
	}
	return []controller.Degraded{{
		Reason: controller.ReasonInboundUnavailable,
		Message: "sockbridge cannot capture this pod's inbound connections on this node (" + reason +
			"): only sidecars on the same node reach its inbound port; other clients reach the app directly",
		Affects: func(p policy.Pod) bool {
			return p.Capture && (p.Inbound.AllPorts || len(p.Inbound.IncludePorts) > 0)
		},
	}}
}

// dnsOffReason says why the datapath captures no DNS, "" when it does.
func dnsOffReason(plan probe.Plan, cfg Config) string {
	if cfg.Datapath.DNSPort == 0 {
		return "the " + cfg.Preset.Name + " preset has no DNS proxy port"
	}
	if !plan.DNS {
		for _, r := range plan.Reasons {
			if strings.HasPrefix(r, "dns: ") {
				return r
			}
		}
		return "dns: off"
	}
	return ""
}

// podFileSource applies the pod file and remembers the outcome for
// readiness and metrics.
type podFileSource struct {
	cfg    Config
	dp     inbound.PodMap
	ready  *readiness
	dnsOff string

	mu     sync.Mutex
	counts map[string]int
}

func (pf *podFileSource) states() map[string]int {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	return maps.Clone(pf.counts)
}

// sync applies the file; a file that cannot be read leaves the pod map as
// it is and the agent not ready until a SIGHUP reads it.
func (pf *podFileSource) sync() {
	states, err := syncPodFile(pf.cfg.Log, pf.dp, pf.cfg, pf.dnsOff)
	if err != nil {
		pf.ready.set(checkPods, err.Error())
		return
	}
	pf.mu.Lock()
	pf.counts = states
	pf.mu.Unlock()
	pf.ready.set(checkPods, "")
	pf.cfg.Log.WithField("pods", states["capture"]+states["no_capture"]).Info(fmt.Sprintf("pods synced from %s", pf.cfg.PodFile))
}

// syncPodFile makes the pod map equal the file and returns the pods by
// state. Bad entries are logged and left out: they must not take the other
// pods' capture down. It fails when the file cannot be read (the pod map is
// left alone) or the pod map could not be updated.
func syncPodFile(log *logrus.Logger, dp inbound.PodMap, cfg Config, dnsOff string) (map[string]int, error) {
	f, err := podfile.Read(cfg.PodFile)
	if err != nil {
		log.WithError(err).Error("pod file unreadable; keeping the current pods, not ready until it is read (SIGHUP rereads it)")
		return nil, err
	}
	var meshDNS bool
	if cfg.Preset != nil {
		meshDNS = cfg.Preset.MeshDNSCapture
	}
	pods, rerr := f.ResolveWith(cfg.CgroupRoot, podfile.Defaults{DNSCapture: meshDNS, DNSAll: cfg.DNSCaptureAll})
	if rerr != nil {
		log.WithError(rerr).Error("pod file has bad entries; they are left out")
	}
	for i := range pods {
		if pods[i].DNS.Capture && dnsOff != "" {
			log.WithField("pod", pods[i].Name).Warn("the pod asks for DNS capture but this node's datapath has it off (" + dnsOff + "): its DNS is not captured")
			pods[i].DNS = policy.DNS{}
		}
	}
	if err := dp.SyncPods(pods); err != nil {
		log.WithError(err).Error("update pod map")
		return nil, fmt.Errorf("update pod map: %w", err)
	}
	states := map[string]int{"capture": 0, "no_capture": 0, "invalid": len(f.Pods) - len(pods)}
	for _, p := range pods {
		if p.Capture {
			states["capture"]++
		} else {
			states["no_capture"]++
		}
	}
	return states, nil
}
