package controller_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/controller"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

const annProxyConfig = "proxy.istio.io/config"

// createDNSPod creates a pod with edit applied to its spec, then its
// cgroupfs cgroup and Running status.
func (k *kube) createDNSPod(name, ip string, annotations map[string]string, edit func(*corev1.Pod)) *kpod {
	k.t.Helper()
	spec := podSpec(name, annotations)
	edit(spec)
	pod, err := k.admin.CoreV1().Pods(namespace).Create(context.Background(), spec, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatalf("create pod %s: %v", name, err)
	}
	p := &kpod{name: name, uid: pod.UID}
	rel, err := controller.PodCgroupPath("cgroupfs", pod.UID, pod.Status.QOSClass)
	if err != nil {
		k.t.Fatal(err)
	}
	p.cgroup = testutil.Cgroup(k.t, k.cgroupRoot, rel)
	p.id = testutil.CgroupID(k.t, p.cgroup)
	k.setRunning(pod, ip)
	return p
}

// waitEvent waits for an Event of reason on the pod whose message has every
// substring.
func (k *kube) waitEvent(t *testing.T, pod *kpod, reason string, substrings ...string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, ev := range k.events(pod.name) {
			if ev.Reason != reason || ev.Type != "Warning" || ev.InvolvedObject.UID != pod.uid {
				continue
			}
			ok := true
			for _, s := range substrings {
				ok = ok && strings.Contains(ev.Message, s)
			}
			if ok {
				t.Logf("event on %s: %s: %s", pod.name, ev.Reason, ev.Message)
				return
			}
		}
	}
	t.Errorf("no %s event on pod %s with %q; events: %+v", reason, pod.name, substrings, k.events(pod.name))
}

// Through a real API server: Istio's DNS switch read from the annotation
// and the sidecar's env (the env wins), nameservers from the pod spec and
// the node's cluster DNS, a bad switch value reported with DNS off and the
// pod still captured; then an agent whose datapath has DNS capture off
// keeps capturing the pods, drops their DNS capture and says so in an Event
// on each pod that asks.
func TestDNSCaptureFromAPI(t *testing.T) {
	k := newKube(t)
	dp := newRecDatapath()
	clusterDNS := netip.MustParseAddr("10.96.0.10")
	a := k.startAgentDNS(dp, controller.DNSConfig{Node: policy.NodeDNS{ClusterDNS: []netip.Addr{clusterDNS}}})

	on := map[string]string{annProxyConfig: "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n"}
	annotated := k.createDNSPod("annotated", "10.250.0.2", on, func(*corev1.Pod) {})
	none := k.createDNSPod("none", "10.250.0.3", on, func(p *corev1.Pod) {
		p.Spec.DNSPolicy = corev1.DNSNone
		p.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"10.250.0.53", "fd00:250::53"}}
	})
	envOff := k.createDNSPod("envoff", "10.250.0.4", on, func(p *corev1.Pod) {
		p.Spec.Containers[1].Env = []corev1.EnvVar{{Name: "ISTIO_META_DNS_CAPTURE", Value: "false"}}
	})
	bad := k.createDNSPod("bad", "10.250.0.5", map[string]string{annProxyConfig: "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"yes\"\n"}, func(*corev1.Pod) {})
	plain := k.createDNSPod("plain", "10.250.0.6", nil, func(*corev1.Pod) {})

	waitState(t, dp, 10*time.Second, "DNS capture per pod", func(m map[uint64]policy.Pod) bool {
		return slices.Equal(m[annotated.id].DNS.Nameservers, []netip.Addr{clusterDNS}) && m[annotated.id].DNS.Capture &&
			slices.Equal(m[none.id].DNS.Nameservers, []netip.Addr{netip.MustParseAddr("10.250.0.53"), netip.MustParseAddr("fd00:250::53")}) &&
			m[envOff.id].Capture && !m[envOff.id].DNS.Capture &&
			m[bad.id].Capture && !m[bad.id].DNS.Capture &&
			m[plain.id].Capture && !m[plain.id].DNS.Capture
	})
	k.waitEvent(t, bad, controller.ReasonInvalidAnnotation, "ISTIO_META_DNS_CAPTURE", `"yes"`)
	for _, p := range []*kpod{annotated, none, envOff, plain} {
		if evs := k.events(p.name); len(evs) != 0 {
			t.Errorf("pod %s got events: %+v", p.name, evs)
		}
	}

	a.stop(t)
	a = k.startAgentDNS(dp, controller.DNSConfig{Off: "dns: off because cgroup/recvmsg4 attach type missing", Node: policy.NodeDNS{ClusterDNS: []netip.Addr{clusterDNS}}})
	waitState(t, dp, 10*time.Second, "captured, DNS off", func(m map[uint64]policy.Pod) bool {
		return m[annotated.id].Capture && !m[annotated.id].DNS.Capture && m[none.id].Capture && !m[none.id].DNS.Capture
	})
	for _, p := range []*kpod{annotated, none} {
		k.waitEvent(t, p, controller.ReasonDNSCaptureUnavailable, "cgroup/recvmsg4", "proxy.istio.io/config")
	}
	if n := countReason(k.events("plain"), controller.ReasonDNSCaptureUnavailable) + countReason(k.events("envoff"), controller.ReasonDNSCaptureUnavailable); n != 0 {
		t.Errorf("%d DNSCaptureUnavailable events on pods that do not ask", n)
	}
	if !a.alive() {
		t.Error("controller died")
	}
}
