package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/sockbridge/sockbridge/pkg/policy"
)

// memDatapath is an in-memory Datapath.
type memDatapath struct {
	mu    sync.Mutex
	pods  map[uint64]policy.Pod
	syncs int
}

func newMemDatapath() *memDatapath { return &memDatapath{pods: map[uint64]policy.Pod{}} }

func (m *memDatapath) UpsertPod(p policy.Pod) error {
	if p.CgroupID == 0 {
		return errors.New("cgroup id 0")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pods[p.CgroupID] = p
	return nil
}

func (m *memDatapath) DeletePod(id uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pods, id)
	return nil
}

func (m *memDatapath) SyncPods(pods []policy.Pod) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.syncs++
	m.pods = map[uint64]policy.Pod{}
	for _, p := range pods {
		m.pods[p.CgroupID] = p
	}
	return nil
}

func (m *memDatapath) snapshot() map[uint64]policy.Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.pods)
}

// stubEvaluate stands in for a mesh preset: pods labelled mesh=yes are
// meshed, capture=off turns capture off, an annotation "bad" is a problem.
func stubEvaluate(pod *corev1.Pod) policy.Evaluation {
	var ev policy.Evaluation
	if pod.Labels["mesh"] != "yes" {
		ev.Reason = "no sidecar"
		return ev
	}
	ev.Meshed = true
	ev.Capture = pod.Labels["capture"] != "off"
	ev.Outbound, ev.Inbound = policy.CaptureAll()
	if ev.Capture && pod.Labels["dns"] == "on" {
		ev.DNSCapture, ev.DNSSource = true, "label dns=on"
	}
	if v, ok := pod.Annotations["bad"]; ok {
		if v == "panic" {
			panic("evaluator bug")
		}
		ev.Problems = append(ev.Problems, policy.Problem{Annotation: "bad", Value: v, Valid: "nothing", Err: errors.New("always bad")})
	}
	return ev
}

type unitEnv struct {
	t      *testing.T
	root   string
	client *fake.Clientset
	dp     *memDatapath
	events *record.FakeRecorder
	dns    DNSConfig
	c      *Controller
	cancel context.CancelFunc
	done   chan error
	resync time.Duration // 0: the default
}

func newUnitEnv(t *testing.T, dp *memDatapath, objs ...*corev1.Pod) *unitEnv {
	t.Helper()
	return newUnitEnvDNS(t, dp, DNSConfig{}, objs...)
}

func newUnitEnvDNS(t *testing.T, dp *memDatapath, dns DNSConfig, objs ...*corev1.Pod) *unitEnv {
	t.Helper()
	e := &unitEnv{t: t, root: t.TempDir(), client: fake.NewClientset(), dp: dp, events: record.NewFakeRecorder(100), dns: dns}
	mkdirs(t, e.root, "kubepods/burstable")
	for _, p := range objs {
		if _, err := e.client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.start()
	return e
}

func (e *unitEnv) start() {
	e.t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	c, err := New(Config{
		Client: e.client, NodeName: "node-a", Preset: &policy.Preset{Name: "stub"},
		CgroupRoot: e.root, Datapath: e.dp, Log: log, Recorder: e.events,
		MaxRetryDelay: 50 * time.Millisecond, DNS: e.dns, Resync: e.resync,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	// The fake clientset loses what is created between the informer's list
	// and its watch; wait for the pod watch, not only for the synced cache.
	podWatch := make(chan struct{})
	var once sync.Once
	e.client.PrependWatchReactor("pods", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := e.client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		if err != nil {
			return false, nil, err
		}
		once.Do(func() { close(podWatch) })
		return true, w, nil
	})
	c.evaluate = stubEvaluate
	c.resolver.id = inode
	c.resolver.rescanEvery = 0
	ctx, cancel := context.WithCancel(context.Background())
	e.c, e.cancel, e.done = c, cancel, make(chan error, 1)
	go func() { e.done <- c.Run(ctx) }()
	e.t.Cleanup(e.stop)
	for _, ch := range []<-chan struct{}{c.Ready(), podWatch} {
		select {
		case <-ch:
		case err := <-e.done:
			e.t.Fatalf("controller stopped: %v", err)
		case <-time.After(10 * time.Second):
			e.t.Fatal("controller not ready or not watching pods")
		}
	}
}

func (e *unitEnv) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	if err := <-e.done; err != nil {
		e.t.Errorf("controller: %v", err)
	}
	e.cancel = nil
}

func testPod(name, uid string, labels, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID(uid), Labels: labels, Annotations: annotations},
		Spec:       corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.0.5", QOSClass: corev1.PodQOSBurstable},
	}
}

// cgroup creates the pod's cgroupfs-style directory and returns its id.
func (e *unitEnv) cgroup(uid string) uint64 {
	e.t.Helper()
	dir := filepath.Join(e.root, "kubepods/burstable/pod"+uid)
	mkdirs(e.t, e.root, "kubepods/burstable/pod"+uid)
	id, err := inode(dir)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

// eventually waits for cond on the datapath's state.
func (e *unitEnv) eventually(what string, cond func(map[uint64]policy.Pod) bool) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if cond(e.dp.snapshot()) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.t.Fatalf("%s: datapath holds %+v", what, e.dp.snapshot())
}

func (e *unitEnv) update(p *corev1.Pod) {
	e.t.Helper()
	if _, err := e.client.CoreV1().Pods(p.Namespace).Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func TestControllerLifecycle(t *testing.T) {
	dp := newMemDatapath()
	dp.pods[999] = policy.Pod{Name: "gone/while-down", CgroupID: 999, Capture: true}
	// An unmeshed pod of the node: the first list is not empty.
	e := newUnitEnv(t, dp, testPod("plain", "uid-plain", nil, nil))
	ctx := context.Background()
	meshed := map[string]string{"mesh": "yes"}

	// Reconcile at start removed the entry of a pod that no longer exists.
	if _, ok := dp.snapshot()[999]; ok || dp.syncs != 1 {
		t.Fatalf("start: stale entry kept or no SyncPods (syncs=%d)", dp.syncs)
	}

	idA := e.cgroup("uid-a")
	a := testPod("a", "uid-a", meshed, nil)
	if _, err := e.client.CoreV1().Pods("default").Create(ctx, a, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("pod a captured", func(m map[uint64]policy.Pod) bool {
		p, ok := m[idA]
		return ok && p.Capture && p.IPv4.String() == "10.1.0.5" && p.Name == "default/a"
	})

	// IP change without restart.
	a.Status.PodIP = "10.1.0.6"
	if _, err := e.client.CoreV1().Pods("default").UpdateStatus(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("pod a follows its IP", func(m map[uint64]policy.Pod) bool { return m[idA].IPv4.String() == "10.1.0.6" })

	// Capture turned off by an update.
	a.Labels = map[string]string{"mesh": "yes", "capture": "off"}
	e.update(a)
	e.eventually("pod a capture off", func(m map[uint64]policy.Pod) bool { p, ok := m[idA]; return ok && !p.Capture })

	// Unmeshed: no entry.
	a.Labels = nil
	e.update(a)
	e.eventually("pod a unmeshed", func(m map[uint64]policy.Pod) bool { _, ok := m[idA]; return !ok })

	// A pod whose cgroup the kubelet creates later is retried, not dropped.
	b := testPod("b", "uid-b", meshed, nil)
	if _, err := e.client.CoreV1().Pods("default").Create(ctx, b, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	idB := e.cgroup("uid-b")
	e.eventually("pod b captured once its cgroup exists", func(m map[uint64]policy.Pod) bool { _, ok := m[idB]; return ok })

	// A pod on another node is ignored (the fake client ignores the field
	// selector; the controller checks again).
	other := testPod("other", "uid-o", meshed, nil)
	other.Spec.NodeName = "node-b"
	idO := e.cgroup("uid-o")
	if _, err := e.client.CoreV1().Pods("default").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Finished pods lose their entry.
	b.Status.Phase = corev1.PodSucceeded
	if _, err := e.client.CoreV1().Pods("default").UpdateStatus(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("pod b finished", func(m map[uint64]policy.Pod) bool { _, ok := m[idB]; return !ok })
	if _, ok := dp.snapshot()[idO]; ok {
		t.Error("pod of another node applied")
	}

	// Delete.
	a.Labels = meshed
	e.update(a)
	e.eventually("pod a meshed again", func(m map[uint64]policy.Pod) bool { _, ok := m[idA]; return ok })
	if err := e.client.CoreV1().Pods("default").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("pod a deleted", func(m map[uint64]policy.Pod) bool { _, ok := m[idA]; return !ok })

	if n := latencySamples(t, e.c); n < 5 {
		t.Errorf("%d latency samples, want one per datapath change (>= 5)", n)
	}
}

// latencySamples is the number of delays the controller's histogram holds.
func latencySamples(t *testing.T, c *Controller) uint64 {
	t.Helper()
	var m dto.Metric
	if err := c.latency.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// A wrong node name lists no pod, and the API server knows no such Node:
// the first, empty list must not empty the datapath (its entries belong to
// the node's real pods), not even at a resync. Once a pod of the node shows
// up, the next resync reconciles.
func TestControllerEmptyFirstListKeepsPods(t *testing.T) {
	dp := newMemDatapath()
	dp.pods[999] = policy.Pod{Name: "real/pod", CgroupID: 999, Capture: true}
	e := &unitEnv{t: t, root: t.TempDir(), client: fake.NewClientset(), dp: dp, events: record.NewFakeRecorder(100)}
	mkdirs(t, e.root, "kubepods/burstable")
	e.resync = 20 * time.Millisecond
	e.start()
	if _, ok := dp.snapshot()[999]; !ok || dp.syncs != 0 {
		t.Fatalf("empty first list: entry removed or SyncPods called (syncs=%d)", dp.syncs)
	}
	time.Sleep(100 * time.Millisecond) // several resyncs
	if _, ok := dp.snapshot()[999]; !ok {
		t.Fatal("a resync after an empty first list removed the entry")
	}
	idA := e.cgroup("uid-a")
	a := testPod("a", "uid-a", map[string]string{"mesh": "yes"}, nil)
	if _, err := e.client.CoreV1().Pods("default").Create(context.Background(), a, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("pod a applied and the stale entry reconciled away", func(m map[uint64]policy.Pod) bool {
		_, stale := m[999]
		return m[idA].Capture && !stale
	})
	if s := e.c.PodStates(); s["capture"] != 1 || s["no_capture"] != 0 || s["retrying"] != 0 {
		t.Errorf("pod states = %v, want one captured", s)
	}
}

// A node the API server confirms, with no pods: the empty first list is
// real, and the start reconcile removes the entries of pods deleted while
// no agent ran.
func TestControllerEmptyNodeReconciles(t *testing.T) {
	dp := newMemDatapath()
	dp.pods[999] = policy.Pod{Name: "gone/while-down", CgroupID: 999, Capture: true}
	e := &unitEnv{t: t, root: t.TempDir(), client: fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}), dp: dp, events: record.NewFakeRecorder(100)}
	mkdirs(t, e.root, "kubepods/burstable")
	e.start()
	if _, ok := dp.snapshot()[999]; ok || dp.syncs != 1 {
		t.Fatalf("existing empty node: stale entry kept or no SyncPods (syncs=%d)", dp.syncs)
	}
}

func TestControllerRecreatedPodSameName(t *testing.T) {
	e := newUnitEnv(t, newMemDatapath())
	ctx := context.Background()
	id1 := e.cgroup("uid-1")
	id2 := e.cgroup("uid-2")
	p := testPod("p", "uid-1", map[string]string{"mesh": "yes"}, nil)
	if _, err := e.client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("first", func(m map[uint64]policy.Pod) bool { _, ok := m[id1]; return ok })
	// Delete and recreate before the controller sees the delete: only the
	// new pod's cgroup may remain.
	e.c.mu.Lock()
	if err := e.client.CoreV1().Pods("default").Delete(ctx, "p", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p2 := testPod("p", "uid-2", map[string]string{"mesh": "yes"}, nil)
	if _, err := e.client.CoreV1().Pods("default").Create(ctx, p2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.c.mu.Unlock()
	e.eventually("recreated", func(m map[uint64]policy.Pod) bool {
		_, old := m[id1]
		_, cur := m[id2]
		return !old && cur
	})
}

func TestControllerTombstone(t *testing.T) {
	e := newUnitEnv(t, newMemDatapath())
	id := e.cgroup("uid-t")
	p := testPod("t", "uid-t", map[string]string{"mesh": "yes"}, nil)
	if _, err := e.client.CoreV1().Pods("default").Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("applied", func(m map[uint64]policy.Pod) bool { _, ok := m[id]; return ok })
	// The informer missed the delete: the pod vanished from its store and
	// the relist hands the handler a tombstone.
	if err := e.c.informer.GetIndexer().Delete(p); err != nil {
		t.Fatal(err)
	}
	e.c.enqueue(cache.DeletedFinalStateUnknown{Key: "default/t", Obj: p}, true)
	e.eventually("tombstone removes the entry", func(m map[uint64]policy.Pod) bool { _, ok := m[id]; return !ok })
}

func TestControllerEventsDeduplicated(t *testing.T) {
	e := newUnitEnv(t, newMemDatapath())
	ctx := context.Background()
	idGood := e.cgroup("uid-good")
	idBad := e.cgroup("uid-bad")
	good := testPod("good", "uid-good", map[string]string{"mesh": "yes"}, nil)
	bad := testPod("bad", "uid-bad", map[string]string{"mesh": "yes"}, map[string]string{"bad": "x"})
	for _, p := range []*corev1.Pod{good, bad} {
		if _, err := e.client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.eventually("both applied", func(m map[uint64]policy.Pod) bool { return len(m) == 2 && m[idGood].Capture && m[idBad].Capture })
	ev := <-e.events.Events
	if !strings.Contains(ev, ReasonInvalidAnnotation) || !strings.Contains(ev, `bad="x"`) || !strings.Contains(ev, "nothing") {
		t.Errorf("event %q: want reason, annotation, value and what is valid", ev)
	}
	// Unrelated updates and resyncs do not repeat it; a new bad value does.
	for i := 0; i < 3; i++ {
		bad.Labels["n"] = fmt.Sprint(i)
		e.update(bad)
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case ev := <-e.events.Events:
		t.Fatalf("repeated event %q", ev)
	default:
	}
	bad.Annotations["bad"] = "y"
	e.update(bad)
	select {
	case ev := <-e.events.Events:
		if !strings.Contains(ev, `bad="y"`) {
			t.Errorf("event %q, want the new value", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for a new bad value")
	}
}

func TestControllerSurvivesPanickingEvaluation(t *testing.T) {
	e := newUnitEnv(t, newMemDatapath())
	ctx := context.Background()
	idGood := e.cgroup("uid-good")
	e.cgroup("uid-boom")
	boom := testPod("boom", "uid-boom", map[string]string{"mesh": "yes"}, map[string]string{"bad": "panic"})
	good := testPod("good", "uid-good", map[string]string{"mesh": "yes"}, nil)
	for _, p := range []*corev1.Pod{boom, good} {
		if _, err := e.client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.eventually("good pod applied next to a panicking one", func(m map[uint64]policy.Pod) bool { _, ok := m[idGood]; return ok && len(m) == 1 })
	// A restart reconciles with the panicking pod present.
	e.stop()
	e.start()
	e.eventually("after restart", func(m map[uint64]policy.Pod) bool { _, ok := m[idGood]; return ok && len(m) == 1 })
}

func TestPodIPs(t *testing.T) {
	p := &corev1.Pod{Status: corev1.PodStatus{
		PodIP:  "fd00::5",
		PodIPs: []corev1.PodIP{{IP: "garbage"}, {IP: "fd00::5"}, {IP: "::ffff:10.0.0.9"}, {IP: "10.0.0.7"}},
	}}
	v4, v6 := podIPs(p)
	if v4.String() != "10.0.0.9" || v6.String() != "fd00::5" {
		t.Errorf("podIPs = %s, %s", v4, v6)
	}
	v4, v6 = podIPs(&corev1.Pod{})
	if v4.IsValid() || v6.IsValid() {
		t.Errorf("no IPs: %s, %s", v4, v6)
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i))
	}
	if p := Percentile(ds, 0.5); p != 50 {
		t.Errorf("p50 = %d", p)
	}
	if p := Percentile(ds, 0.99); p != 99 {
		t.Errorf("p99 = %d", p)
	}
	if p := Percentile(nil, 0.5); p != 0 {
		t.Errorf("empty p50 = %d", p)
	}
}

// A pod that asks for DNS capture gets its nameservers from its spec and
// the node's kubelet settings, or every port-53 destination; where the
// datapath has DNS capture off or its nameservers are unknown, it keeps
// the rest of its policy and gets one Event saying why.
func TestControllerDNS(t *testing.T) {
	cluster := []netip.Addr{netip.MustParseAddr("10.96.0.10")}
	tests := []struct {
		name   string
		dns    DNSConfig
		policy corev1.DNSPolicy
		want   policy.DNS
		reason string
	}{
		{"cluster DNS", DNSConfig{Node: policy.NodeDNS{ClusterDNS: cluster}}, "", policy.DNS{Capture: true, Nameservers: cluster}, ""},
		{"capture all", DNSConfig{All: true}, "", policy.DNS{Capture: true, All: true}, ""},
		{"datapath without DNS", DNSConfig{Off: "dns: off because cgroup/recvmsg4 attach type missing", Node: policy.NodeDNS{ClusterDNS: cluster}}, "", policy.DNS{}, ReasonDNSCaptureUnavailable},
		{"nameservers unknown", DNSConfig{}, corev1.DNSClusterFirst, policy.DNS{}, ReasonDNSNoNameservers},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newUnitEnvDNS(t, newMemDatapath(), tt.dns)
			id := e.cgroup("uid-dns")
			idOff := e.cgroup("uid-nodns")
			p := testPod("dns", "uid-dns", map[string]string{"mesh": "yes", "dns": "on"}, nil)
			p.Spec.DNSPolicy = tt.policy
			quiet := testPod("nodns", "uid-nodns", map[string]string{"mesh": "yes"}, nil)
			for _, pod := range []*corev1.Pod{p, quiet} {
				if _, err := e.client.CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			e.eventually("applied", func(m map[uint64]policy.Pod) bool { return len(m) == 2 && m[id].Capture && m[idOff].Capture })
			if got := e.dp.snapshot(); !reflect.DeepEqual(got[id].DNS, tt.want) || !reflect.DeepEqual(got[idOff].DNS, policy.DNS{}) {
				t.Errorf("DNS %+v and %+v, want %+v and none", got[id].DNS, got[idOff].DNS, tt.want)
			}
			// Once per pod object, not on every update.
			p.Labels["n"] = "1"
			e.update(p)
			time.Sleep(200 * time.Millisecond)
			var events []string
			for len(e.events.Events) > 0 {
				events = append(events, <-e.events.Events)
			}
			if tt.reason == "" && len(events) != 0 || tt.reason != "" && (len(events) != 1 || !strings.Contains(events[0], tt.reason) || !strings.Contains(events[0], "label dns=on")) {
				t.Errorf("events %q, want one %q naming where the pod asked", events, tt.reason)
			}
		})
	}
}
