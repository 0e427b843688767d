package controller_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

const proxyUID = 1337

var (
	testSubnet = netip.MustParsePrefix("10.250.0.0/16")
	server1    = netip.MustParseAddr("10.250.0.1")
	server2    = netip.MustParseAddr("10.250.1.1") // in the excluded range
)

// world is the traffic side of a test: the real datapath attached to the
// test cgroup, a private network with two servers, and pods with HAProxy as
// their sidecar.
type world struct {
	t   *testing.T
	k   *kube
	cfg datapath.Config
	dp  *datapath.Datapath
	net *testutil.Network
}

func newWorld(t *testing.T, k *kube) *world {
	t.Helper()
	testutil.RequirePrivileged(t, "haproxy", "ss", "sysctl")
	w := &world{t: t, k: k}
	w.cfg = datapath.IstioDefaults()
	w.cfg.ForPreset(k.preset)
	w.cfg.CgroupPath = k.cgroupRoot
	w.cfg.PinDir = testutil.PinDir(t)
	t.Cleanup(func() {
		if err := datapath.Uninstall(w.cfg.PinDir); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	w.load()
	return w
}

// load loads the datapath, adopting what an earlier load pinned.
func (w *world) load() {
	w.t.Helper()
	dp, err := datapath.Load(w.cfg)
	if err != nil {
		testutil.Unavailable(w.t, "load datapath: %v", err)
	}
	w.t.Cleanup(func() { dp.Close() })
	w.dp = dp
}

// network adds the namespaces and servers traffic tests need.
func (w *world) network() {
	w.t.Helper()
	w.net = testutil.NewNetwork(w.t, "sbk"+testutil.RandomSuffix()[:5], testSubnet)
	for i, ip := range []netip.Addr{server1, server2} {
		ns := w.net.AddHost(fmt.Sprintf("srv%d", i+1), ip)
		for _, port := range []int{8080, 9090} {
			testutil.Start(w.t, testutil.ProcSpec{Netns: ns, Args: []string{bin.sbpeer, "serve", "-listen", fmt.Sprintf("0.0.0.0:%d", port)}})
			testutil.WaitListening(w.t, ns, port)
		}
	}
}

// tpod is a pod with a netns, container cgroups and a running sidecar.
type tpod struct {
	*kpod
	ns      *testutil.Netns
	app     string
	sidecar *testutil.Sidecar
}

func (w *world) addPod(name, driver string, ip netip.Addr, annotations map[string]string) *tpod {
	w.t.Helper()
	kp := w.k.createPod(name, driver, ip.String(), annotations)
	p := &tpod{kpod: kp, ns: w.net.AddHost(name, ip)}
	p.app = testutil.Cgroup(w.t, kp.cgroup, "app")
	proxy := testutil.Cgroup(w.t, kp.cgroup, "istio-proxy")
	p.sidecar = testutil.StartSidecar(w.t, testutil.SidecarSpec{
		Netns: p.ns, Cgroup: proxy, UID: proxyUID, GID: proxyUID,
		Outbound: int(w.cfg.OutboundPort), Inbound: int(w.cfg.InboundPort),
	})
	return p
}

// dial connects from the pod's app container to addr and reports whether
// the connection went through the sidecar.
func (p *tpod) dial(t *testing.T, addr string) (captured bool) {
	t.Helper()
	before := len(p.sidecar.LogLines("outbound"))
	out, err := testutil.Output(t, time.Minute, testutil.ProcSpec{
		Netns: p.ns, Cgroup: p.app,
		Args: []string{bin.sbpeer, "roundtrip", "-addr", addr, "-bytes", "4096"},
	})
	if err != nil {
		t.Fatalf("%s dials %s: %v", p.name, addr, err)
	}
	var r peer.Roundtrip
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
	if !r.Intact || r.Getpeername != addr {
		t.Fatalf("%s dials %s: %+v", p.name, addr, r)
	}
	// HAProxy logs a connection as it is accepted (option logasap).
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if lines := p.sidecar.LogLines("outbound"); len(lines) > before {
			if !strings.Contains(lines[len(lines)-1], "orig_dst="+addr) {
				t.Errorf("sidecar log %q, want orig_dst=%s", lines[len(lines)-1], addr)
			}
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// The controller drives the real datapath with real traffic through
// HAProxy: capture on after create, off after interceptionMode NONE,
// excluded port and range honoured after an annotation update, nothing
// after delete, and an agent restart (new process state, pinned maps
// adopted) reconciles a pod deleted while it was down.
func TestCaptureFollowsAPI(t *testing.T) {
	k := newKube(t)
	w := newWorld(t, k)
	w.network()
	a := k.startAgent(w.dp)

	s1 := netip.AddrPortFrom(server1, 8080).String()
	s1x := netip.AddrPortFrom(server1, 9090).String()
	s2 := netip.AddrPortFrom(server2, 8080).String()

	pa := w.addPod("a", "systemd", netip.MustParseAddr("10.250.0.2"), nil)
	pb := w.addPod("b", "cgroupfs", netip.MustParseAddr("10.250.0.3"), nil)
	waitState(t, w.dp, 10*time.Second, "a and b in the maps", func(m map[uint64]policy.Pod) bool {
		return m[pa.id].Capture && m[pb.id].Capture
	})
	if !pa.dial(t, s1) || !pb.dial(t, s1) {
		t.Fatal("capture off after create, want on")
	}

	k.annotate("a", map[string]string{annMode: "NONE"})
	waitState(t, w.dp, 10*time.Second, "a: NONE", func(m map[uint64]policy.Pod) bool { p, ok := m[pa.id]; return !ok || !p.Capture })
	if pa.dial(t, s1) {
		t.Error("a captured after interceptionMode NONE")
	}

	k.annotate("b", map[string]string{annExcludePorts: "9090", annExcludeCIDRs: "10.250.1.0/24"})
	waitState(t, w.dp, 10*time.Second, "b: exclusions", func(m map[uint64]policy.Pod) bool {
		return slices.Contains(m[pb.id].Outbound.ExcludePorts, 9090)
	})
	if !pb.dial(t, s1) {
		t.Error("b: 8080 on a not excluded address not captured")
	}
	if pb.dial(t, s1x) {
		t.Error("b: excluded port 9090 captured")
	}
	if pb.dial(t, s2) {
		t.Error("b: excluded range 10.250.1.0/24 captured")
	}

	k.deletePod("a")
	waitState(t, w.dp, 10*time.Second, "a deleted", func(m map[uint64]policy.Pod) bool { _, ok := m[pa.id]; return !ok })
	if pa.dial(t, s1) {
		t.Error("a captured after delete")
	}

	// Restart: the agent stops, its file descriptors close, b is deleted
	// meanwhile, a new agent adopts the pinned datapath.
	a.stop(t)
	w.dp.Close()
	k.deletePod("b")
	if !pb.dial(t, s1) {
		t.Error("b not captured while no agent runs: the datapath must outlive the agent")
	}
	w.load()
	k.startAgent(w.dp)
	waitState(t, w.dp, 10*time.Second, "restart reconciles b away", func(m map[uint64]policy.Pod) bool { _, ok := m[pb.id]; return !ok })
	if pb.dial(t, s1) {
		t.Error("b captured after a restart reconciled its deletion")
	}
}
