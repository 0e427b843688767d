package controller_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sockbridge/sockbridge/pkg/policy"
)

// The controller takes both families from status.podIPs: a pod that gains
// an IPv6 address, or whose IPv6 address changes, is updated in the
// datapath without an agent restart; an IPv6-only pod gets its IPv6
// address and no IPv4 one.
func TestControllerPodIPsBothFamilies(t *testing.T) {
	k := newKube(t)
	dp := newRecDatapath()
	k.startAgent(dp)
	v4 := netip.MustParseAddr("10.250.0.2")
	first6, second6 := netip.MustParseAddr("fd00:250::2"), netip.MustParseAddr("fd00:250::22")

	pa := k.createPod("a", "cgroupfs", v4.String(), nil)
	waitState(t, dp, 10*time.Second, "a captured with its IPv4 address", func(m map[uint64]policy.Pod) bool {
		return m[pa.id].Capture && m[pa.id].IPv4 == v4 && !m[pa.id].IPv6.IsValid()
	})

	setPodIPs := func(name string, ips ...string) {
		t.Helper()
		ctx := context.Background()
		pod, err := k.admin.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status.PodIP = ips[0]
		pod.Status.PodIPs = nil
		for _, ip := range ips {
			pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		if _, err := k.admin.CoreV1().Pods(namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update status of %s: %v", name, err)
		}
	}

	setPodIPs("a", v4.String(), first6.String())
	waitState(t, dp, 10*time.Second, "a gains an IPv6 address", func(m map[uint64]policy.Pod) bool {
		return m[pa.id].IPv4 == v4 && m[pa.id].IPv6 == first6
	})
	setPodIPs("a", v4.String(), second6.String())
	waitState(t, dp, 10*time.Second, "a's IPv6 address changes", func(m map[uint64]policy.Pod) bool {
		return m[pa.id].IPv4 == v4 && m[pa.id].IPv6 == second6
	})

	// IPv6 first in podIPs (an IPv6-primary dual-stack cluster), and an
	// IPv6-only pod.
	pb := k.createPod("b", "systemd", "fd00:250::3", nil)
	waitState(t, dp, 10*time.Second, "IPv6-only pod b", func(m map[uint64]policy.Pod) bool {
		return m[pb.id].Capture && m[pb.id].IPv6 == netip.MustParseAddr("fd00:250::3") && !m[pb.id].IPv4.IsValid()
	})
	setPodIPs("b", "fd00:250::3", "10.250.0.3")
	waitState(t, dp, 10*time.Second, "b becomes dual-stack, IPv6 primary", func(m map[uint64]policy.Pod) bool {
		return m[pb.id].IPv6 == netip.MustParseAddr("fd00:250::3") && m[pb.id].IPv4 == netip.MustParseAddr("10.250.0.3")
	})
}
