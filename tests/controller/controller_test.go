package controller_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/controller"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

const (
	annMode         = "sidecar.istio.io/interceptionMode"
	annExcludePorts = "traffic.sidecar.istio.io/excludeOutboundPorts"
	annExcludeCIDRs = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
)

// The agent's credentials can do what deploy/'s ClusterRole grants and
// nothing more.
func TestAgentRBAC(t *testing.T) {
	k := newKube(t)
	ctx := context.Background()
	if _, err := k.agent.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName}); err != nil {
		t.Errorf("agent cannot list its node's pods: %v", err)
	}
	if _, err := k.agent.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{}); err != nil {
		t.Errorf("agent cannot get its node: %v", err)
	}
	forbidden := map[string]error{}
	_, forbidden["list secrets"] = k.agent.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	_, forbidden["create pods"] = k.agent.CoreV1().Pods(namespace).Create(ctx, podSpec("x", nil), metav1.CreateOptions{})
	_, forbidden["list nodes"] = k.agent.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	forbidden["delete events"] = k.agent.CoreV1().Events(namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	for what, err := range forbidden {
		if !apierrors.IsForbidden(err) {
			t.Errorf("agent may %s (err %v), want forbidden", what, err)
		}
	}
	// The DaemonSet from deploy/ passed the API server's validation.
	if _, err := k.admin.AppsV1().DaemonSets("sockbridge").Get(ctx, "sockbridge", metav1.GetOptions{}); err != nil {
		t.Errorf("deploy/ DaemonSet: %v", err)
	}
}

// The controller's life cycle with a recording datapath: create, update,
// interception NONE, excluded port and range, a bad annotation, a pod
// whose cgroup comes late, delete, and a restart after a pod was deleted
// while no agent ran. Both kubelet cgroup drivers' names are used.
func TestControllerAgainstAPIServer(t *testing.T) {
	k := newKube(t)
	dp := newRecDatapath()
	a := k.startAgent(dp)

	pa := k.createPod("a", "systemd", "10.250.0.2", nil)
	pb := k.createPod("b", "cgroupfs", "10.250.0.3", nil)
	waitState(t, dp, 10*time.Second, "pods a and b captured", func(m map[uint64]policy.Pod) bool {
		return m[pa.id].Capture && m[pb.id].Capture &&
			m[pa.id].IPv4 == netip.MustParseAddr("10.250.0.2") && m[pb.id].Name == namespace+"/b"
	})

	k.annotate("a", map[string]string{annMode: "NONE"})
	waitState(t, dp, 10*time.Second, "a: interceptionMode NONE", func(m map[uint64]policy.Pod) bool {
		p, ok := m[pa.id]
		return (!ok || !p.Capture) && m[pb.id].Capture
	})

	k.annotate("b", map[string]string{annExcludePorts: "9090", annExcludeCIDRs: "10.250.1.0/24"})
	waitState(t, dp, 10*time.Second, "b: excluded port and range", func(m map[uint64]policy.Pod) bool {
		p := m[pb.id]
		return p.Capture && slices.Contains(p.Outbound.ExcludePorts, 9090) &&
			slices.Contains(p.Outbound.ExcludeCIDRs, netip.MustParsePrefix("10.250.1.0/24"))
	})

	// A bad annotation: an Event on that pod, the documented safe
	// behaviour (not captured), the other pods unaffected.
	pc := k.createPod("c", "cgroupfs", "10.250.0.4", map[string]string{annExcludePorts: "80,http"})
	waitState(t, dp, 10*time.Second, "c: bad annotation, not captured", func(m map[uint64]policy.Pod) bool {
		p, ok := m[pc.id]
		return (!ok || !p.Capture) && m[pb.id].Capture
	})
	var found bool
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !found; time.Sleep(50 * time.Millisecond) {
		for _, ev := range k.events("c") {
			if ev.Reason == controller.ReasonInvalidAnnotation && ev.Type == "Warning" &&
				strings.Contains(ev.Message, annExcludePorts) && strings.Contains(ev.Message, "80,http") &&
				ev.InvolvedObject.UID == pc.uid {
				found = true
				t.Logf("event on c: %s: %s", ev.Reason, ev.Message)
			}
		}
	}
	if !found {
		t.Errorf("no %s event on pod c naming the annotation and value; events: %+v", controller.ReasonInvalidAnnotation, k.events("c"))
	}
	if evs := k.events("b"); len(evs) != 0 {
		t.Errorf("pod b got events: %+v", evs)
	}

	// A pod whose cgroup the kubelet creates late is retried.
	ctx := context.Background()
	pod, err := k.admin.CoreV1().Pods(namespace).Create(ctx, podSpec("d", nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	k.setRunning(pod, "10.250.0.5")
	time.Sleep(300 * time.Millisecond)
	rel, _ := controller.PodCgroupPath("cgroupfs", pod.UID, pod.Status.QOSClass)
	pd := &kpod{name: "d", uid: pod.UID}
	pd.cgroup = testutil.Cgroup(t, k.cgroupRoot, rel)
	pd.id = testutil.CgroupID(t, pd.cgroup)
	waitState(t, dp, 10*time.Second, "d captured once its cgroup exists", func(m map[uint64]policy.Pod) bool { return m[pd.id].Capture })

	k.deletePod("a")
	waitState(t, dp, 10*time.Second, "a deleted", func(m map[uint64]policy.Pod) bool { _, ok := m[pa.id]; return !ok })

	// Restart: b is deleted while no agent runs.
	a.stop(t)
	k.deletePod("b")
	a = k.startAgent(dp)
	waitState(t, dp, 10*time.Second, "restart reconciled", func(m map[uint64]policy.Pod) bool {
		_, b := m[pb.id]
		return !b && m[pd.id].Capture
	})
	// No second event for c after the resync of a restart is required
	// by nothing, but one per restart at most.
	if n := countReason(k.events("c"), controller.ReasonInvalidAnnotation); n > 2 {
		t.Errorf("%d events on c, want at most one per agent start", n)
	}
	if !a.alive() {
		t.Error("controller died")
	}
}

func countReason(evs []corev1.Event, reason string) int {
	n := 0
	for _, ev := range evs {
		if ev.Reason == reason {
			n += int(max(ev.Count, 1))
		}
	}
	return n
}
