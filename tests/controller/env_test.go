// Package controller_test runs sockbridge's pod controller against a real
// etcd and kube-apiserver started on 127.0.0.1, with the agent's RBAC from
// deploy/, pod cgroups created where a kubelet creates them (below a test
// cgroup) and, where traffic is checked, the real datapath, HAProxy as the
// sidecar and network namespaces the test creates. There is no kubelet:
// the test sets pod status as one would.
package controller_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/sockbridge/sockbridge/internal/kubetest"
	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/controller"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// Binaries built once for the package.
var bin struct{ sbpeer, sockbridge string }

func TestMain(m *testing.M) {
	testutil.MainWithBinaries(m, "controller", map[string]*string{"../sbpeer": &bin.sbpeer, "../../cmd/sockbridge": &bin.sockbridge})
}

const (
	nodeName  = "node-a"
	namespace = "apps"
	// agentUser is the name RBAC gives deploy/'s ServiceAccount; the
	// static token file makes the agent that user.
	agentUser = "system:serviceaccount:sockbridge:sockbridge"
	// unboundUser is a user no RBAC object grants anything.
	unboundUser = "unbound"
)

// kube is one test's control plane and cgroup tree.
type kube struct {
	t      *testing.T
	api    *kubetest.KubeAPI
	admin  kubernetes.Interface
	agent  kubernetes.Interface
	preset *policy.Preset
	// cgroupRoot is the test cgroup standing in for the node's cgroup2
	// root: the kubelet's pod cgroups are created below it.
	cgroupRoot string
}

func newKube(t *testing.T) *kube {
	t.Helper()
	testutil.RequirePrivileged(t)
	k := &kube{t: t}
	k.cgroupRoot = testutil.TestCgroup(t)
	k.api = kubetest.StartKubeAPI(t, kubetest.KubeUser{
		Name:   agentUser,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:sockbridge", "system:authenticated"},
	}, kubetest.KubeUser{Name: unboundUser, Groups: []string{"system:authenticated"}})
	k.api.ApplyKustomization(t, "../../deploy")
	k.admin = k.api.Client(t, kubetest.KubeAdmin)
	k.agent = k.api.Client(t, agentUser)
	ctx := context.Background()
	if _, err := k.admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node: %v", err)
	}
	if _, err := k.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	p, err := policy.PresetByName("istio")
	if err != nil {
		t.Fatal(err)
	}
	k.preset = p
	return k
}

// kpod is a pod in the API and its kubelet-named cgroup.
type kpod struct {
	name   string
	uid    types.UID
	cgroup string
	id     uint64
}

// podSpec is a pod with an app and an istio-proxy sidecar bound to the
// test node, as the scheduler would leave it.
func podSpec(name string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: annotations},
		Spec: corev1.PodSpec{
			NodeName: nodeName,
			Containers: []corev1.Container{
				{Name: "app", Image: "app:1"},
				{Name: "istio-proxy", Image: "proxyv2:1", Args: []string{"proxy", "sidecar"}},
			},
		},
	}
}

// createPod creates the pod, then its cgroup under the given kubelet
// cgroup driver's name, then sets its status (phase, IP) as the kubelet
// would.
func (k *kube) createPod(name, driver, ip string, annotations map[string]string) *kpod {
	k.t.Helper()
	ctx := context.Background()
	pod, err := k.admin.CoreV1().Pods(namespace).Create(ctx, podSpec(name, annotations), metav1.CreateOptions{})
	if err != nil {
		k.t.Fatalf("create pod %s: %v", name, err)
	}
	p := &kpod{name: name, uid: pod.UID}
	rel, err := controller.PodCgroupPath(driver, pod.UID, pod.Status.QOSClass)
	if err != nil {
		k.t.Fatal(err)
	}
	p.cgroup = testutil.Cgroup(k.t, k.cgroupRoot, rel)
	p.id = testutil.CgroupID(k.t, p.cgroup)
	k.setRunning(pod, ip)
	return p
}

// setRunning does the kubelet's status update: phase Running and pod IP.
func (k *kube) setRunning(pod *corev1.Pod, ip string) {
	k.t.Helper()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = ip
	pod.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	pod.Status.HostIP = "10.250.255.254"
	if _, err := k.admin.CoreV1().Pods(namespace).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		k.t.Fatalf("update status of %s: %v", pod.Name, err)
	}
}

// annotate replaces the pod's annotations.
func (k *kube) annotate(name string, annotations map[string]string) {
	k.t.Helper()
	ctx := context.Background()
	for attempt := 0; ; attempt++ {
		pod, err := k.admin.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			k.t.Fatalf("get %s: %v", name, err)
		}
		pod.Annotations = annotations
		_, err = k.admin.CoreV1().Pods(namespace).Update(ctx, pod, metav1.UpdateOptions{})
		if err == nil {
			return
		}
		if attempt > 5 {
			k.t.Fatalf("annotate %s: %v", name, err)
		}
	}
}

func (k *kube) deletePod(name string) {
	k.t.Helper()
	if err := k.admin.CoreV1().Pods(namespace).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		k.t.Fatalf("delete %s: %v", name, err)
	}
}

// agent is a running controller.
type agent struct {
	c      *controller.Controller
	reg    *prometheus.Registry
	logs   *logtest.Hook
	cancel context.CancelFunc
	done   chan error
}

// histogram is the controller's latency histogram at one moment.
type histogram struct {
	count  uint64
	bounds []float64 // seconds
	counts []uint64  // cumulative, per bound
}

// latencies reads the controller's event -> datapath histogram.
func (a *agent) latencies(t *testing.T) histogram {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sockbridge_controller_event_to_datapath_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		out := histogram{count: h.GetSampleCount()}
		for _, b := range h.GetBucket() {
			out.bounds = append(out.bounds, b.GetUpperBound())
			out.counts = append(out.counts, b.GetCumulativeCount())
		}
		return out
	}
	t.Fatal("no sockbridge_controller_event_to_datapath_seconds metric")
	return histogram{}
}

// since is what h counted after before.
func (h histogram) since(before histogram) histogram {
	out := histogram{count: h.count - before.count, bounds: h.bounds}
	for i := range h.counts {
		out.counts = append(out.counts, h.counts[i]-before.counts[i])
	}
	return out
}

// quantile is the upper bound of the bucket holding the q-th sample.
func (h histogram) quantile(q float64) time.Duration {
	rank := uint64(q*float64(h.count) + 0.999999)
	for i, c := range h.counts {
		if c >= rank {
			return time.Duration(h.bounds[i] * float64(time.Second))
		}
	}
	return time.Duration(math.Inf(1))
}

// startAgent runs the controller as the agent's RBAC user and waits until
// it is ready.
func (k *kube) startAgent(dp controller.Datapath) *agent {
	k.t.Helper()
	a := k.runController(dp, func(*controller.Config) {})
	a.waitReady(k.t)
	return a
}

// startAgentDNS is startAgent with DNS capture settings.
func (k *kube) startAgentDNS(dp controller.Datapath, dns controller.DNSConfig) *agent {
	k.t.Helper()
	a := k.runController(dp, func(c *controller.Config) { c.DNS = dns })
	a.waitReady(k.t)
	return a
}

// runController starts the controller with the agent's configuration as
// edited by edit, without waiting for it. Its log lines are kept in
// a.logs.
func (k *kube) runController(dp controller.Datapath, edit func(*controller.Config)) *agent {
	k.t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.InfoLevel)
	log.SetOutput(io.Discard)
	if testing.Verbose() {
		log.SetOutput(os.Stderr)
	}
	logs := logtest.NewLocal(log)
	reg := prometheus.NewRegistry()
	cfg := controller.Config{
		Client: k.agent, NodeName: nodeName, Preset: k.preset,
		CgroupRoot: k.cgroupRoot, Datapath: dp, Log: log,
		MaxRetryDelay: 100 * time.Millisecond, Registerer: reg,
	}
	edit(&cfg)
	c, err := controller.New(cfg)
	if err != nil {
		k.t.Fatalf("controller: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{c: c, reg: reg, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- c.Run(ctx) }()
	k.t.Cleanup(func() { a.stop(k.t) })
	return a
}

// waitReady waits until the controller is ready, or fails t.
func (a *agent) waitReady(t *testing.T) {
	t.Helper()
	c := a.c
	select {
	case <-c.Ready():
	case err := <-a.done:
		t.Fatalf("controller stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("controller not ready after 30 s: %s", c.NotReady())
	}
}

// waitLog waits until the controller has logged a line at level or above
// whose message and error contain every one of words.
func (a *agent) waitLog(t *testing.T, level logrus.Level, timeout time.Duration, words ...string) string {
	t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, e := range a.logs.AllEntries() {
			line := e.Message
			if err, ok := e.Data[logrus.ErrorKey].(error); ok {
				line += ": " + err.Error()
			}
			if e.Level > level {
				continue
			}
			all := true
			for _, w := range words {
				all = all && strings.Contains(line, w)
			}
			if all {
				return line
			}
		}
	}
	var lines []string
	for _, e := range a.logs.AllEntries() {
		lines = append(lines, e.Level.String()+" "+e.Message)
	}
	t.Fatalf("no %s log line with %q within %s; logged:\n%s", level, words, timeout, strings.Join(lines, "\n"))
	return ""
}

func (a *agent) stop(t *testing.T) {
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	select {
	case err := <-a.done:
		if err != nil {
			t.Errorf("controller: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("controller did not stop")
	}
}

// alive reports whether the controller is still running.
func (a *agent) alive() bool {
	select {
	case <-a.done:
		return false
	default:
		return a.cancel != nil
	}
}

// recDatapath is a recording in-memory datapath.
type recDatapath struct {
	mu   sync.Mutex
	pods map[uint64]policy.Pod
	ops  int
}

func newRecDatapath() *recDatapath { return &recDatapath{pods: map[uint64]policy.Pod{}} }

func (r *recDatapath) UpsertPod(p policy.Pod) error {
	if p.CgroupID == 0 {
		return fmt.Errorf("upsert pod %s: cgroup id 0", p.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pods[p.CgroupID] = p
	r.ops++
	return nil
}

func (r *recDatapath) DeletePod(id uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pods, id)
	r.ops++
	return nil
}

func (r *recDatapath) SyncPods(pods []policy.Pod) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pods = map[uint64]policy.Pod{}
	for _, p := range pods {
		r.pods[p.CgroupID] = p
	}
	r.ops++
	return nil
}

// snapshot returns the pods by cgroup id.
func (r *recDatapath) snapshot() map[uint64]policy.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.pods)
}

// opsCount is the number of changes made so far.
func (r *recDatapath) opsCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ops
}

func (r *recDatapath) Pods() ([]policy.Pod, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []policy.Pod
	for _, p := range maps.Clone(r.pods) {
		out = append(out, p)
	}
	return out, nil
}

// podLister is a datapath whose content the test can read.
type podLister interface {
	Pods() ([]policy.Pod, error)
}

// state returns the datapath's pods by cgroup id.
func state(t *testing.T, dp podLister) map[uint64]policy.Pod {
	t.Helper()
	pods, err := dp.Pods()
	if err != nil {
		t.Fatalf("read datapath pods: %v", err)
	}
	m := make(map[uint64]policy.Pod, len(pods))
	for _, p := range pods {
		m[p.CgroupID] = p
	}
	return m
}

// waitState polls the datapath until cond holds.
func waitState(t *testing.T, dp podLister, timeout time.Duration, what string, cond func(map[uint64]policy.Pod) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m := state(t, dp)
		if cond(m) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after %s; datapath holds %d pods: %+v", what, timeout, len(m), m)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// events lists the Events recorded on a pod.
func (k *kube) events(name string) []corev1.Event {
	k.t.Helper()
	l, err := k.admin.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.name=" + name,
	})
	if err != nil {
		k.t.Fatalf("list events: %v", err)
	}
	return l.Items
}
