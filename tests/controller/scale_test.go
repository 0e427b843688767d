package controller_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sockbridge/sockbridge/pkg/controller"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// podIP gives pod i a unique address (data only: no traffic in these tests).
func podIP(i int) string { return fmt.Sprintf("10.250.%d.%d", 10+i/200, 1+i%200) }

// API event -> datapath updated, over 300 pod events (status, annotation,
// delete) against the real datapath's maps. A report, not an assertion.
func TestLatency(t *testing.T) {
	k := newKube(t)
	w := newWorld(t, k)
	a := k.startAgent(w.dp)
	const n = 100

	pods := make([]*kpod, n)
	for i := range pods {
		pods[i] = k.createPod(fmt.Sprintf("lat-%d", i), []string{"cgroupfs", "systemd"}[i%2], podIP(i), nil)
	}
	waitState(t, w.dp, 60*time.Second, "all captured", func(m map[uint64]policy.Pod) bool {
		for _, p := range pods {
			if !m[p.id].Capture {
				return false
			}
		}
		return true
	})
	before := a.latencies(t)

	// Each step changes one pod through the API and waits, from the
	// moment the write is sent, until the maps show the change.
	var e2e []time.Duration
	measure := func(what string, write func(), cond func(map[uint64]policy.Pod) bool) {
		start := time.Now()
		write()
		waitState(t, w.dp, 10*time.Second, what, cond)
		e2e = append(e2e, time.Since(start))
	}
	ctx := context.Background()
	for i, p := range pods {
		newIP := netip.MustParseAddr(podIP(i + n))
		pod, err := k.admin.CoreV1().Pods(namespace).Get(ctx, p.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		measure("status: new pod IP", func() { k.setRunning(pod, newIP.String()) }, func(m map[uint64]policy.Pod) bool { return m[p.id].IPv4 == newIP })
		measure("annotation", func() {
			k.annotate(p.name, map[string]string{annExcludePorts: "9090"})
		}, func(m map[uint64]policy.Pod) bool { return slices.Contains(m[p.id].Outbound.ExcludePorts, 9090) })
		measure("delete", func() { k.deletePod(p.name) },
			func(m map[uint64]policy.Pod) bool { _, ok := m[p.id]; return !ok })
	}
	inner := a.latencies(t).since(before)
	t.Logf("API write sent -> maps updated (test side, includes the write and %d-pod map polling), %d events: p50 %s, p99 %s, max %s",
		n, len(e2e), controller.Percentile(e2e, 0.5), controller.Percentile(e2e, 0.99), controller.Percentile(e2e, 1))
	t.Logf("watch event received -> maps updated (controller's histogram sockbridge_controller_event_to_datapath_seconds), %d events: p50 <= %s, p99 <= %s (bucket upper bounds; target p99 <= 50ms)",
		inner.count, inner.quantile(0.5), inner.quantile(0.99))
	if inner.count < 200 {
		t.Errorf("controller measured %d events, want >= 200", inner.count)
	}
}

// Annotation values the churn draws from: valid ones and garbage.
var (
	validAnnotations = []map[string]string{
		nil,
		{annMode: "REDIRECT"},
		{annMode: "NONE"},
		{"sidecar.istio.io/inject": "false"},
		{annExcludePorts: "9090,9091"},
		{annExcludeCIDRs: "10.0.0.0/8, 192.168.0.0/16"},
		{"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.96.0.0/12"},
		{"traffic.sidecar.istio.io/includeInboundPorts": "8080,8443"},
		{"traffic.sidecar.istio.io/excludeInboundPorts": "9000"},
	}
	invalidAnnotations = []map[string]string{
		{annExcludePorts: "http"},
		{annExcludePorts: "70000"},
		{annExcludeCIDRs: "10.0.0.0/33"},
		{annExcludeCIDRs: "::::/x"},
		{annMode: "TPROXY"},
		{annMode: "bogus"},
		{"sidecar.istio.io/inject": "maybe"},
		{annExcludePorts: manyPorts(policy.MaxPorts + 1)},
		{"traffic.sidecar.istio.io/excludeInterfaces": "eth1"},
		{"status.sidecar.istio.io/port": "\x00\xff"},
	}
)

func manyPorts(n int) string {
	var ps []string
	for i := 1; i <= n; i++ {
		ps = append(ps, strconv.Itoa(1000+i))
	}
	return strings.Join(ps, ",")
}

func randomAnnotations(r *rand.Rand) map[string]string {
	if r.IntN(3) == 0 {
		return invalidAnnotations[r.IntN(len(invalidAnnotations))]
	}
	return validAnnotations[r.IntN(len(validAnnotations))]
}

// 500 pods created, updated with random valid and invalid annotations and
// deleted, in parallel; afterwards the maps equal what the API server
// says, the controller runs, and its memory is reported.
func TestChurn(t *testing.T) {
	k := newKube(t)
	w := newWorld(t, k)
	a := k.startAgent(w.dp)
	heapBefore := heap()
	const (
		n        = 500
		parallel = 16
	)
	var (
		mu   sync.Mutex
		ids  = map[string]uint64{} // pod name -> cgroup id
		wg   sync.WaitGroup
		next = make(chan int)
	)
	start := time.Now()
	for g := 0; g < parallel; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 42))
			for i := range next {
				name := fmt.Sprintf("churn-%d", i)
				p := k.createPod(name, []string{"cgroupfs", "systemd"}[r.IntN(2)], podIP(i), randomAnnotations(r))
				mu.Lock()
				ids[name] = p.id
				mu.Unlock()
				for u := r.IntN(4); u > 0; u-- {
					k.annotate(name, randomAnnotations(r))
				}
				if r.IntN(2) == 0 {
					k.deletePod(name)
				}
			}
		}(uint64(g))
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	t.Logf("churn: %d pods through the API in %s", n, time.Since(start).Round(time.Millisecond))

	// What the API server says, through the preset the agent uses.
	want := func() map[uint64]policy.Pod {
		l, err := k.admin.CoreV1().Pods(namespace).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		m := map[uint64]policy.Pod{}
		for i := range l.Items {
			pod := &l.Items[i]
			ev := k.preset.Evaluate(pod)
			if !ev.Meshed || pod.Status.Phase != corev1.PodRunning {
				continue
			}
			id := ids[pod.Name]
			m[id] = policy.Pod{CgroupID: id, Capture: ev.Capture, IPv4: netip.MustParseAddr(pod.Status.PodIP)}
		}
		return m
	}()
	var diff string
	deadline := time.Now().Add(60 * time.Second)
	for {
		diff = compare(want, state(t, w.dp))
		if diff == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if diff != "" {
		t.Fatalf("maps differ from the API server after churn:\n%s", diff)
	}
	if got := len(a.c.Applied()); got != len(want) {
		t.Errorf("controller believes %d pods applied, API server says %d", got, len(want))
	}
	if !a.alive() {
		t.Fatal("controller died during churn")
	}
	var capturing int
	for _, p := range want {
		if p.Capture {
			capturing++
		}
	}
	heapAfter := heap()
	t.Logf("after churn: %d pods in the maps (%d capturing) = API server; controller alive; heap in use %s before, %s after (whole test process, after GC)",
		len(want), capturing, mib(heapBefore), mib(heapAfter))
	if heapAfter > heapBefore+256<<20 {
		t.Errorf("heap grew by %s during churn", mib(heapAfter-heapBefore))
	}
}

// compare lists the differences between the expected and the datapath's
// pods on what the controller decides: presence, capture and IPv4.
func compare(want, got map[uint64]policy.Pod) string {
	var b strings.Builder
	for id, w := range want {
		g, ok := got[id]
		switch {
		case !ok:
			fmt.Fprintf(&b, "missing cgroup %d (%+v)\n", id, w)
		case g.Capture != w.Capture || g.IPv4 != w.IPv4:
			fmt.Fprintf(&b, "cgroup %d: capture %v ip %s, want capture %v ip %s\n", id, g.Capture, g.IPv4, w.Capture, w.IPv4)
		}
	}
	for id, g := range got {
		if _, ok := want[id]; !ok {
			fmt.Fprintf(&b, "extra cgroup %d (%s)\n", id, g.Name)
		}
	}
	return b.String()
}

func heap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
