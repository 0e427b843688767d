// Package controller keeps the datapath's pod map in step with the pods the
// API server has bound to this node: a client-go shared informer on the
// node's pods, the mesh preset's verdict on each pod, and the pod's
// identity, its pod-level cgroup id, found where the kubelet creates it.
//
// It needs pods get/list/watch and events create (deploy/clusterrole.yaml)
// and read access to the node's cgroup v2 hierarchy.
package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/sockbridge/sockbridge/pkg/cgroups"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// Datapath is what the controller changes. *datapath.Datapath implements it.
type Datapath interface {
	// UpsertPod adds or replaces the pod keyed by its cgroup id.
	UpsertPod(policy.Pod) error
	// DeletePod removes a pod; removing an absent pod is not an error.
	DeletePod(cgroupID uint64) error
	// SyncPods makes the pod map equal the given pods.
	SyncPods([]policy.Pod) error
}

// Config configures a Controller.
type Config struct {
	// Client talks to the API server with the agent's credentials.
	Client kubernetes.Interface
	// NodeName is this node's name (the downward API's spec.nodeName).
	NodeName string
	// Preset is the mesh whose pods are captured.
	Preset *policy.Preset
	// CgroupRoot is the cgroup v2 directory below which the kubelet's pod
	// cgroups (kubepods or kubepods.slice) are searched; "" means the
	// detected cgroup2 mount.
	CgroupRoot string
	// SearchDepth bounds how deep below CgroupRoot the kubepods directory
	// is searched (a nested kubelet puts it below its own cgroup); 0 means 4.
	SearchDepth int
	Datapath    Datapath
	Log         logrus.FieldLogger
	// Recorder records Events on pods; nil means Events are created
	// through Client as component "sockbridge" (create only, no patch).
	Recorder record.EventRecorder
	// Resync is how often every pod is re-evaluated and the datapath's
	// pod map is made equal to the controller's view; 0 means 10 minutes.
	Resync time.Duration
	// Workers is the number of pods processed in parallel; 0 means 2.
	Workers int
	// Degraded lists what the agent's plan leaves out that pods may ask
	// for (inbound capture on a kernel without sk_lookup): every affected
	// pod gets a Warning Event, once per pod object and reason.
	Degraded []Degraded
	// DNS says how pods that ask for DNS capture get it.
	DNS DNSConfig
	// MaxRetryDelay caps the back-off of a pod whose cgroup the kubelet
	// has not created yet: the longest an app could run uncaptured after
	// its pod's cgroup appears; 0 means 100 ms. A pod the datapath
	// rejects is retried with a back-off up to 30 s.
	MaxRetryDelay time.Duration
	// SyncTimeout is how long Run waits for the first list of pods before
	// it logs what it cannot list (forbidden by RBAC, API server
	// unreachable); it goes on waiting and logs again after each further
	// SyncTimeout. 0 means 30 s.
	SyncTimeout time.Duration
	// Registerer, when set, gets the controller's metrics: the histogram
	// of API event -> datapath delays.
	Registerer prometheus.Registerer
}

// DNSConfig says how the controller fills a pod's DNS capture
// (policy.Pod.DNS) when its evaluation asks for it.
type DNSConfig struct {
	// Off, when not empty, says why the datapath captures no DNS (the
	// probe's plan: "dns: off because ..."): pods that ask for DNS capture
	// keep the rest of their policy and get a DNSCaptureUnavailable Event.
	Off string
	// All captures every port-53 destination of a pod that captures DNS,
	// not only its nameservers (istio-iptables --capture-all-dns, which
	// istio-cni sets whenever DNS capture is on).
	All bool
	// Node is what the kubelet writes into its pods' resolv.conf; the
	// nameservers of each pod come from it and the pod's spec
	// (policy.Nameservers).
	Node policy.NodeDNS
}

// Event reasons the controller records on pods.
const (
	// ReasonInvalidAnnotation: an annotation could not be used; the
	// message names it, its value and what is valid.
	ReasonInvalidAnnotation = "InvalidCaptureAnnotation"
	// ReasonCaptureFailed: the datapath rejected the pod's policy; the
	// controller keeps retrying.
	ReasonCaptureFailed = "CaptureFailed"
	// ReasonInboundUnavailable: the pod wants inbound capture, which the
	// agent's kernel cannot give.
	ReasonInboundUnavailable = "InboundCaptureUnavailable"
	// ReasonDNSCaptureUnavailable: the pod asks for DNS capture but this
	// node's datapath has it off (the message says why); its DNS goes to
	// its nameservers uncaptured, the rest of its policy applies.
	ReasonDNSCaptureUnavailable = "DNSCaptureUnavailable"
	// ReasonDNSNoNameservers: the pod asks for DNS capture of its
	// nameservers but the agent cannot tell which they are.
	ReasonDNSNoNameservers = "DNSCaptureNoNameservers"
)

// Controller watches the node's pods and applies their policies.
type Controller struct {
	cfg      Config
	log      logrus.FieldLogger
	evaluate func(*corev1.Pod) policy.Evaluation
	resolver *resolver
	informer cache.SharedIndexInformer
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
	// latency observes API event -> datapath updated delays.
	latency prometheus.Histogram
	ready   chan struct{}

	// mu serialises datapath changes with the state below.
	mu sync.Mutex
	// applied is what the datapath holds, by pod key (namespace/name).
	applied map[string]entry
	// received holds when the first not yet applied event of a pod
	// arrived.
	received map[string]time.Time
	// reported holds the problems already recorded as Events, by pod key.
	reported map[string]reportedProblems
	// degradedSent holds the Degraded reasons already recorded, by pod
	// UID.
	degradedSent map[types.UID]map[string]bool
	// failures holds the last error logged for a pod, to log each once.
	failures map[string]string
	// pending counts the retries of pods whose cgroup does not exist yet.
	pending map[string]int
	// dnsNoted holds the DNS Event last recorded for each pod object
	// ("<uid> <message>"), to record each once.
	dnsNoted map[string]string
	// listErr is the informer's last list or watch error, until it syncs.
	listErr error
	// nodeExists is whether the API server confirmed this node exists.
	nodeExists bool
	// emptyStart is set when the first list had no pod of this node and
	// the node could not be confirmed to exist: the datapath's entries
	// were left alone and are reconciled only once a pod of the node shows
	// up (a wrong node name must not uncapture the node's pods).
	emptyStart bool
}

// entry is one pod as applied to the datapath.
type entry struct {
	uid types.UID
	pod policy.Pod
}

// reportedProblems are the messages already sent for one pod object.
type reportedProblems struct {
	uid      types.UID
	messages map[string]bool
}

// New builds a controller. Nothing runs until Run.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil {
		return nil, errors.New("controller: no kubernetes client")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("controller: no node name (set --node-name or NODE_NAME from the downward API)")
	}
	if cfg.Preset == nil {
		return nil, errors.New("controller: no mesh preset")
	}
	if cfg.Datapath == nil {
		return nil, errors.New("controller: no datapath")
	}
	if cfg.Log == nil {
		cfg.Log = logrus.StandardLogger()
	}
	if cfg.CgroupRoot == "" {
		root, err := cgroups.Root()
		if err != nil {
			return nil, fmt.Errorf("controller: %w", err)
		}
		cfg.CgroupRoot = root
	}
	if cfg.SearchDepth <= 0 {
		cfg.SearchDepth = 4
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 10 * time.Minute
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.MaxRetryDelay <= 0 {
		cfg.MaxRetryDelay = 100 * time.Millisecond
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = 30 * time.Second
	}
	c := &Controller{
		cfg:      cfg,
		log:      cfg.Log.WithField("node", cfg.NodeName),
		evaluate: cfg.Preset.Evaluate,
		resolver: newResolver(cfg.CgroupRoot, cfg.SearchDepth),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sockbridge_controller_event_to_datapath_seconds",
			Help: "Delay from a pod event reaching the controller to the datapath's maps holding its result; events that change nothing in the datapath are not counted.",
			// The target is p99 <= 50 ms; measured p99 <= 5 ms (TestLatency).
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		ready:        make(chan struct{}),
		applied:      map[string]entry{},
		received:     map[string]time.Time{},
		reported:     map[string]reportedProblems{},
		degradedSent: map[types.UID]map[string]bool{},
		failures:     map[string]string{},
		pending:      map[string]int{},
		dnsNoted:     map[string]string{},
	}
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](10*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "sockbridge-pods"},
	)
	c.recorder = cfg.Recorder
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.latency); err != nil {
			return nil, fmt.Errorf("controller: register metrics: %w", err)
		}
	}

	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
		}))
	c.informer = factory.Core().V1().Pods().Informer()
	if err := c.informer.SetTransform(stripManagedFields); err != nil {
		return nil, fmt.Errorf("controller: set informer transform: %w", err)
	}
	if err := c.informer.SetWatchErrorHandler(c.listFailed); err != nil {
		return nil, fmt.Errorf("controller: set informer error handler: %w", err)
	}
	if _, err := c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { c.enqueue(obj, true) },
		UpdateFunc: func(oldObj, newObj any) {
			o, _ := oldObj.(*corev1.Pod)
			n, _ := newObj.(*corev1.Pod)
			// A resync redelivers the same version: no new API event.
			fresh := o == nil || n == nil || n.ResourceVersion == "" || o.ResourceVersion != n.ResourceVersion
			c.enqueue(newObj, fresh)
		},
		DeleteFunc: func(obj any) { c.enqueue(obj, true) },
	}); err != nil {
		return nil, fmt.Errorf("controller: add pod event handler: %w", err)
	}
	return c, nil
}

// Run runs a controller built from cfg until ctx ends. It is what the agent
// calls.
func Run(ctx context.Context, cfg Config) error {
	c, err := New(cfg)
	if err != nil {
		return err
	}
	return c.Run(ctx)
}

// Run starts the informer, waits for the first list, makes the datapath's
// pod map equal the node's pods (removing entries of pods deleted while no
// agent ran), then applies every change until ctx ends. It returns nil when
// ctx ends after a successful start. Run may be called once.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	if c.recorder == nil {
		var b record.EventBroadcaster
		b, c.recorder = newEventRecorder(c.cfg.Client, c.cfg.NodeName)
		defer b.Shutdown()
	}
	go c.informer.RunWithContext(ctx)
	exists := c.checkNode(ctx)
	c.mu.Lock()
	c.nodeExists = exists
	c.mu.Unlock()
	if err := c.waitSynced(ctx); err != nil {
		return err
	}
	c.reconcile("start")
	close(c.ready)
	c.log.WithField("pods", len(c.informer.GetStore().ListKeys())).Info("pod controller synced")

	var wg sync.WaitGroup
	for i := 0; i < c.cfg.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c.processNext() {
			}
		}()
	}
	tick := time.NewTicker(c.cfg.Resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			c.queue.ShutDown()
			wg.Wait()
			c.log.Info("pod controller stopped")
			return nil
		case <-tick.C:
			c.resyncDatapath()
		}
	}
}

// Ready is closed once the informer has synced and the datapath holds the
// node's pods.
func (c *Controller) Ready() <-chan struct{} { return c.ready }

// NotReady says why the controller is not ready yet ("" once it is): the
// informer's first list has not arrived, with the last list error.
func (c *Controller) NotReady() string {
	select {
	case <-c.ready:
		return ""
	default:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.listErr != nil {
		return fmt.Sprintf("pods of node %s not listed yet: %v", c.cfg.NodeName, c.listErr)
	}
	return fmt.Sprintf("pods of node %s not listed yet", c.cfg.NodeName)
}

// listFailed is the informer's list and watch error handler: it keeps the
// error for NotReady and the sync timeout's message.
func (c *Controller) listFailed(_ *cache.Reflector, err error) {
	c.mu.Lock()
	c.listErr = err
	c.mu.Unlock()
	c.log.WithError(err).Debug("list or watch pods failed; retrying")
}

// waitSynced waits for the informer's first list. Every SyncTimeout without
// it, it logs what it cannot list, and goes on waiting: the informer keeps
// retrying, and an agent that exits would only crash-loop.
func (c *Controller) waitSynced(ctx context.Context) error {
	waited := time.Duration(0)
	for {
		wctx, cancel := context.WithTimeout(ctx, c.cfg.SyncTimeout)
		synced := cache.WaitForCacheSync(wctx.Done(), c.informer.HasSynced)
		cancel()
		if synced {
			c.mu.Lock()
			c.listErr = nil
			c.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("controller: pod informer not synced: %w", context.Cause(ctx))
		}
		waited += c.cfg.SyncTimeout
		c.mu.Lock()
		err := c.listErr
		c.mu.Unlock()
		if err == nil {
			err = errors.New("no answer from the API server")
		}
		c.log.WithError(err).Errorf("cannot list pods (spec.nodeName=%s) after %s: not ready until the list succeeds", c.cfg.NodeName, waited)
	}
}

// checkNode reports whether the API server confirms this node exists, and
// warns when it does not: with a wrong node name the controller would see
// no pods at all. A node the agent may not read (no "get nodes" grant) is
// not an error, but not confirmed either.
func (c *Controller) checkNode(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := c.cfg.Client.CoreV1().Nodes().Get(ctx, c.cfg.NodeName, metav1.GetOptions{})
	switch {
	case err == nil:
		return true
	case apierrors.IsNotFound(err):
		c.log.Warnf("node %q does not exist in the API server: is --node-name right? No pod will be captured or removed until pods of that node appear", c.cfg.NodeName)
	default:
		c.log.WithError(err).Infof("cannot check that node %q exists", c.cfg.NodeName)
	}
	return false
}

// PodStates counts the pods the controller knows by capture state:
// "capture" (applied, captured), "no_capture" (applied, meshed but capture
// off) and "retrying" (not applied yet: cgroup not there or datapath error).
func (c *Controller) PodStates() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	states := map[string]int{"capture": 0, "no_capture": 0, "retrying": 0}
	for _, e := range c.applied {
		if e.pod.Capture {
			states["capture"]++
		} else {
			states["no_capture"]++
		}
	}
	for key := range c.failures {
		if _, ok := c.applied[key]; !ok {
			states["retrying"]++
		}
	}
	return states
}

// Applied returns the pods the controller has applied to the datapath,
// ordered by name.
func (c *Controller) Applied() []policy.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	pods := make([]policy.Pod, 0, len(c.applied))
	for _, e := range c.applied {
		pods = append(pods, e.pod)
	}
	sortPods(pods)
	return pods
}

// enqueue queues the pod's key; fresh marks a new API event, whose arrival
// time is kept for the latency measurement.
func (c *Controller) enqueue(obj any, fresh bool) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		c.log.WithError(err).Warn("pod event without a key ignored")
		return
	}
	if fresh {
		now := time.Now()
		c.mu.Lock()
		if _, ok := c.received[key]; !ok {
			c.received[key] = now
		}
		c.mu.Unlock()
	}
	c.queue.Add(key)
}

func (c *Controller) processNext() bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	err := c.syncSafely(key)
	switch {
	case err == nil:
		c.queue.Forget(key)
		c.clearFailure(key)
	case errors.Is(err, ErrCgroupNotFound):
		c.logFailure(key, err, logrus.DebugLevel)
		c.queue.AddAfter(key, c.pendingDelay(key))
	default:
		c.logFailure(key, err, logrus.ErrorLevel)
		c.queue.AddRateLimited(key)
	}
	return true
}

// syncSafely is sync with a recover: no pod content may crash the agent.
func (c *Controller) syncSafely(key string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("pod %s: panic while applying: %v", key, r)
		}
	}()
	return c.sync(key)
}

// sync brings the datapath's entry of one pod in line with the informer's
// copy of it.
func (c *Controller) sync(key string) error {
	obj, exists, err := c.informer.GetIndexer().GetByKey(key)
	if err != nil {
		return fmt.Errorf("pod %s: read cache: %w", key, err)
	}
	pod, _ := obj.(*corev1.Pod)
	if !exists || pod == nil {
		return c.remove(key, "deleted")
	}
	want, ev, err := c.desired(key, pod)
	c.report(key, pod, ev)
	if want != nil {
		c.noteDNS(key, pod, ev, want)
	}
	if err != nil {
		return err
	}
	if want == nil {
		return c.remove(key, ev.Reason)
	}
	c.reportDegraded(pod, *want)
	return c.apply(key, pod.UID, *want)
}

// desired computes the datapath entry the pod should have: nil when the
// pod is not meshed or gone from the node; an error wrapping
// ErrCgroupNotFound when its cgroup does not exist yet. It changes nothing.
func (c *Controller) desired(key string, pod *corev1.Pod) (*policy.Pod, policy.Evaluation, error) {
	ev := c.evaluate(pod)
	switch {
	case pod.Spec.NodeName != c.cfg.NodeName:
		ev.Reason = "pod not on this node"
		return nil, ev, nil
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		// The kubelet removes a finished pod's cgroup.
		ev.Reason = "pod finished"
		return nil, ev, nil
	case !ev.Meshed:
		return nil, ev, nil
	case pod.Spec.HostNetwork:
		// The sidecar would share the node's network namespace.
		ev.Reason = "host network pods are never captured"
		return nil, ev, nil
	}
	path, id, err := c.resolver.resolve(pod.UID, pod.Status.QOSClass)
	if err != nil {
		return nil, ev, fmt.Errorf("pod %s: %w", key, err)
	}
	p := &policy.Pod{
		Name:       key,
		CgroupID:   id,
		CgroupPath: path,
		Capture:    ev.Capture,
		Outbound:   ev.Outbound,
		Inbound:    ev.Inbound,
	}
	p.IPv4, p.IPv6 = podIPs(pod)
	p.DNS, _ = c.dnsOf(pod, ev)
	return p, ev, nil
}

// dnsOf is the pod's DNS capture, and when the pod asks for DNS capture
// but does not get it, the Event reason and message saying why.
func (c *Controller) dnsOf(pod *corev1.Pod, ev policy.Evaluation) (dns policy.DNS, why [2]string) {
	if !ev.Capture || !ev.DNSCapture {
		return policy.DNS{}, why
	}
	if c.cfg.DNS.Off != "" {
		return policy.DNS{}, [2]string{ReasonDNSCaptureUnavailable, fmt.Sprintf(
			"sockbridge: the pod asks for DNS capture (%s) but this node's datapath has it off (%s): its DNS goes to its nameservers uncaptured",
			ev.DNSSource, c.cfg.DNS.Off)}
	}
	if c.cfg.DNS.All {
		return policy.DNS{Capture: true, All: true}, why
	}
	servers, reason := policy.Nameservers(pod, c.cfg.DNS.Node)
	if len(servers) == 0 {
		return policy.DNS{}, [2]string{ReasonDNSNoNameservers, fmt.Sprintf(
			"sockbridge: the pod asks for DNS capture (%s) but its nameservers are unknown (%s): its DNS is not captured",
			ev.DNSSource, reason)}
	}
	return policy.DNS{Capture: true, Nameservers: servers}, why
}

// noteDNS records, once per pod object and message, why a pod that asks
// for DNS capture does not get it.
func (c *Controller) noteDNS(key string, pod *corev1.Pod, ev policy.Evaluation, p *policy.Pod) {
	_, why := c.dnsOf(pod, ev)
	note := ""
	if why[0] != "" {
		note = string(pod.UID) + " " + why[1]
	}
	c.mu.Lock()
	seen := c.dnsNoted[key] == note
	if note == "" {
		delete(c.dnsNoted, key)
	} else {
		c.dnsNoted[key] = note
	}
	c.mu.Unlock()
	if seen || note == "" {
		return
	}
	c.log.WithFields(logrus.Fields{"pod": key, "dns": ev.DNSSource}).Warn(why[1])
	c.recorder.Event(pod, corev1.EventTypeWarning, why[0], eventMessage(policy.Problem{}, why[1]))
}

// podIPs returns the pod's first IPv4 and first IPv6 address; malformed
// addresses are skipped.
func podIPs(pod *corev1.Pod) (v4, v6 netip.Addr) {
	ips := make([]string, 0, len(pod.Status.PodIPs)+1)
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	ips = append(ips, pod.Status.PodIP)
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		a = a.Unmap()
		switch {
		case a.Is4() && !v4.IsValid():
			v4 = a
		case a.Is6() && !v6.IsValid():
			v6 = a
		}
	}
	return v4, v6
}

// apply writes a pod's entry to the datapath unless it is already there.
func (c *Controller) apply(key string, uid types.UID, p policy.Pod) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	old, had := c.applied[key]
	if had && old.pod.CgroupID != p.CgroupID {
		// Recreated under the same name, or a new cgroup.
		if err := c.cfg.Datapath.DeletePod(old.pod.CgroupID); err != nil {
			return fmt.Errorf("pod %s: remove old cgroup %d: %w", key, old.pod.CgroupID, err)
		}
		delete(c.applied, key)
		had = false
	}
	if had && reflect.DeepEqual(old.pod, p) {
		delete(c.received, key)
		return nil
	}
	if err := c.cfg.Datapath.UpsertPod(p); err != nil {
		return fmt.Errorf("pod %s: %w", key, err)
	}
	c.applied[key] = entry{uid: uid, pod: p}
	c.observeLocked(key)
	c.log.WithFields(logrus.Fields{
		"pod": key, "cgroup_id": p.CgroupID, "ipv4": p.IPv4, "ipv6": p.IPv6, "capture": p.Capture,
	}).Debug("pod applied")
	return nil
}

// remove deletes a pod's entry from the datapath, if it has one.
func (c *Controller) remove(key, reason string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if reason == "deleted" {
		delete(c.reported, key)
		if old, ok := c.applied[key]; ok {
			delete(c.degradedSent, old.uid)
		}
		delete(c.dnsNoted, key)
	}
	old, had := c.applied[key]
	if !had {
		delete(c.received, key)
		return nil
	}
	if err := c.cfg.Datapath.DeletePod(old.pod.CgroupID); err != nil {
		return fmt.Errorf("pod %s: %w", key, err)
	}
	delete(c.applied, key)
	c.observeLocked(key)
	c.log.WithFields(logrus.Fields{"pod": key, "cgroup_id": old.pod.CgroupID, "reason": reason}).Debug("pod removed")
	return nil
}

// observeLocked records the latency of the pod's pending event, if any.
func (c *Controller) observeLocked(key string) {
	if t, ok := c.received[key]; ok {
		c.latency.Observe(time.Since(t).Seconds())
		delete(c.received, key)
	}
}

// reconcile makes the datapath's pod map equal the informer's view: every
// meshed pod whose cgroup exists is upserted, every other entry removed.
// Pods whose cgroup is still missing are left to the workers' retries.
func (c *Controller) reconcile(why string) {
	var want []policy.Pod
	applied := map[string]entry{}
	for _, obj := range c.informer.GetStore().List() {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			continue
		}
		key, err := cache.MetaNamespaceKeyFunc(pod)
		if err != nil {
			continue
		}
		p, _, err := c.desiredSafely(key, pod)
		if err != nil || p == nil {
			continue
		}
		want = append(want, *p)
		applied[key] = entry{uid: pod.UID, pod: *p}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.informer.GetStore().ListKeys()) == 0 && !c.nodeExists && (why == "start" || c.emptyStart) {
		// A wrong node name lists nothing: never let it empty the map.
		// An existing node with no pods is a real empty list.
		c.emptyStart = true
		c.log.WithField("why", why).Warn("no pod is bound to this node, which the API server does not confirm exists: the datapath's pod entries are left as they are until a pod of the node shows up")
		return
	}
	c.emptyStart = false
	if err := c.cfg.Datapath.SyncPods(want); err != nil {
		// The workers apply every pod again: none is marked applied.
		c.log.WithError(err).Error("reconcile datapath with the API server's pods")
		c.applied = map[string]entry{}
		return
	}
	c.applied = applied
	c.log.WithFields(logrus.Fields{"pods": len(want), "why": why}).Info("datapath reconciled")
}

// desiredSafely is desired with a recover.
func (c *Controller) desiredSafely(key string, pod *corev1.Pod) (p *policy.Pod, ev policy.Evaluation, err error) {
	defer func() {
		if r := recover(); r != nil {
			p, err = nil, fmt.Errorf("pod %s: panic while evaluating: %v", key, r)
		}
	}()
	return c.desired(key, pod)
}

// resyncDatapath rewrites the datapath's pod map from the applied state,
// repairing entries changed or removed behind the controller's back.
func (c *Controller) resyncDatapath() {
	c.mu.Lock()
	empty := c.emptyStart
	c.mu.Unlock()
	if empty {
		// Entries the first list did not account for were left alone;
		// once the node has pods, the full reconcile removes stale ones.
		if len(c.informer.GetStore().ListKeys()) > 0 {
			c.reconcile("resync after an empty start")
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	pods := make([]policy.Pod, 0, len(c.applied))
	for _, e := range c.applied {
		pods = append(pods, e.pod)
	}
	if err := c.cfg.Datapath.SyncPods(pods); err != nil {
		c.log.WithError(err).Error("resync datapath")
	}
}

// logFailure logs a pod's error once per distinct message.
func (c *Controller) logFailure(key string, err error, level logrus.Level) {
	msg := err.Error()
	c.mu.Lock()
	seen := c.failures[key] == msg
	c.failures[key] = msg
	c.mu.Unlock()
	if seen {
		return
	}
	l := c.log.WithField("pod", key).WithError(err)
	if level == logrus.DebugLevel {
		l.Debug("pod cgroup not there yet; retrying")
		return
	}
	l.Error("apply pod; retrying")
	if obj, exists, _ := c.informer.GetIndexer().GetByKey(key); exists {
		if pod, ok := obj.(*corev1.Pod); ok {
			c.recorder.Eventf(pod, corev1.EventTypeWarning, ReasonCaptureFailed, "sockbridge could not apply the pod's capture policy (retrying): %v", err)
		}
	}
}

func (c *Controller) clearFailure(key string) {
	c.mu.Lock()
	delete(c.failures, key)
	delete(c.pending, key)
	c.mu.Unlock()
}

// pendingDelay is the next retry delay of a pod waiting for its cgroup:
// 10 ms, doubling up to MaxRetryDelay.
func (c *Controller) pendingDelay(key string) time.Duration {
	c.mu.Lock()
	n := c.pending[key]
	c.pending[key] = n + 1
	c.mu.Unlock()
	d := 10 * time.Millisecond << min(n, 20)
	return min(d, c.cfg.MaxRetryDelay)
}
