package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/cgroups"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

const (
	echoPort = 8080 // sbpeer serve: hello line, then echo
	sinkPort = 8081 // sbpeer sink: hello line, read to EOF, answer count and CRC
	proxyUID = 1337
	// The explicit proxy (variant 2) listens here and forwards to fixed
	// upstreams, echo and sink.
	explicitEchoPort = 15080
	explicitSinkPort = 15081
	netnsPrefix      = "sbb"
)

var (
	subnet   = netip.MustParsePrefix("10.250.0.0/24")
	serverIP = netip.MustParseAddr("10.250.0.1")
)

// Variant IDs, in the order.
const (
	direct = iota + 1
	explicit
	iptables
	sockbridge
	splice
)

var variantNames = map[int]string{
	direct:     "direct",
	explicit:   "explicit proxy",
	iptables:   "iptables (Istio)",
	sockbridge: "sockbridge",
	splice:     "sockbridge + splice",
}

// variant is one way of getting the app's bytes to the server. Every
// variant has its own pod built the same way (netns, kubelet-style cgroups,
// HAProxy sidecar as uid 1337); only the capture differs.
type variant struct {
	id   int
	name string
	// unavailable says why the variant cannot run on this build or
	// kernel; it is then reported, never faked.
	unavailable string
	pod         *pod
	echoAddr    string
	sinkAddr    string
	// logPrefix is the HAProxy log line prefix every connection of this
	// variant must produce ("" for direct: none may appear).
	logPrefix string
	proxy     *testutil.Proc // the HAProxy that must log the connections
	dp        *datapath.Datapath
	pinDir    string
	// mesh is the meshed server pod of variants 4 and 5 (mesh.go): the
	// sidecar-to-sidecar path on one node, the one splicing applies to.
	mesh *meshServer
}

type pod struct {
	ns      *testutil.Netns
	cgroup  string // pod-level cgroup: the app and the sidecar
	app     string
	proxy   string
	id      uint64
	sidecar *testutil.Sidecar
}

// world is everything the benchmark built: removed by the TB's cleanups.
type world struct {
	t        testutil.TB
	dir      string // scratch files readable by the proxy uid
	sbpeer   string
	root     string // the benchmark's cgroup, a child of the cgroup2 root
	net      *testutil.Network
	server   *testutil.Netns
	serverCg string
	variants []*variant
	iptRules string // the nat table variant 3 ran with, as iptables-save shows it
}

func buildWorld(t testutil.TB, s settings) *world {
	t.Helper()
	w := &world{t: t}
	w.dir = scratchDir(t)
	w.sbpeer = s.Sbpeer
	if w.sbpeer == "" {
		w.sbpeer = buildSbpeer(t, w.dir)
	}
	suffix := testutil.RandomSuffix()
	w.root = testutil.Cgroup(t, "", "sockbridge-bench-"+suffix)
	refuseCgroupRoot(t, w.root)
	w.net = testutil.NewNetwork(t, netnsPrefix+suffix[:5], subnet)
	w.startServer()
	plain := testutil.Cgroup(t, w.root, "plain")
	for i, id := range s.Variants {
		ip := netip.AddrFrom4([4]byte{10, 250, 0, byte(11 + i)})
		w.variants = append(w.variants, w.addVariant(id, plain, ip))
	}
	return w
}

// scratchDir is a temporary directory the proxy uid can read.
func scratchDir(t testutil.TB) string {
	return testutil.ReadableTempDir(t, "sockbridge-bench-")
}

func buildSbpeer(t testutil.TB, dir string) string {
	out := filepath.Join(dir, "sbpeer")
	cmd := exec.Command("go", "build", "-o", out, "github.com/sockbridge/sockbridge/tests/sbpeer")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build sbpeer (run from inside the module or pass -sbpeer): %v\n%s", err, b)
	}
	return out
}

// refuseCgroupRoot stops the run before anything could attach to the
// machine's root cgroup, which would capture the machine's own traffic.
func refuseCgroupRoot(t testutil.TB, path string) {
	root, err := cgroups.Root()
	if err != nil {
		t.Fatalf("find cgroup2 root: %v", err)
	}
	if filepath.Clean(path) == filepath.Clean(root) {
		t.Fatalf("refusing to use the cgroup2 root %s", root)
	}
}

// startServer runs the echo server and the sink in the server host, in a
// cgroup of their own so their CPU time can be read.
func (w *world) startServer() {
	w.server = w.net.AddHost("srv", serverIP)
	w.serverCg = testutil.Cgroup(w.t, w.root, "server")
	for mode, port := range map[string]int{"serve": echoPort, "sink": sinkPort} {
		testutil.Start(w.t, testutil.ProcSpec{
			Netns: w.server, Cgroup: w.serverCg,
			Args: []string{w.sbpeer, mode, "-listen", fmt.Sprintf("0.0.0.0:%d", port)},
		})
		testutil.WaitListening(w.t, w.server, port)
	}
}

var hostNames = map[int]string{direct: "direct", explicit: "explicit", iptables: "ipt", sockbridge: "sb", splice: "sbsplice"}

func (w *world) addVariant(id int, plain string, ip netip.Addr) *variant {
	w.t.Helper()
	v := &variant{
		id: id, name: variantNames[id], logPrefix: "outbound",
		echoAddr: netip.AddrPortFrom(serverIP, echoPort).String(),
		sinkAddr: netip.AddrPortFrom(serverIP, sinkPort).String(),
	}
	parent := plain
	if id == sockbridge || id == splice {
		parent = testutil.Cgroup(w.t, w.root, hostNames[id]+"-attach")
		if v.unavailable = w.loadDatapath(v, parent); v.unavailable != "" {
			w.t.Logf("variant %d (%s) not available: %s", id, v.name, v.unavailable)
			return v
		}
	}
	v.pod = w.addPod(hostNames[id], parent, ip)
	v.proxy = v.pod.sidecar.Proc
	switch id {
	case direct:
		v.logPrefix = ""
	case explicit:
		v.proxy = w.startExplicitProxy(v.pod)
		v.logPrefix = "explicit"
		v.echoAddr = fmt.Sprintf("127.0.0.1:%d", explicitEchoPort)
		v.sinkAddr = fmt.Sprintf("127.0.0.1:%d", explicitSinkPort)
	case iptables:
		w.iptRules = applyIstioRules(w.t, v.pod.ns)
	case sockbridge, splice:
		if err := v.dp.UpsertPod(meshedPod(v.pod.id, ip)); err != nil {
			w.t.Fatalf("put pod of variant %d in the map: %v", id, err)
		}
		v.mesh = w.addMeshServer(v, parent, meshServerIP(ip))
	}
	return v
}

// meshedPod is the policy of a meshed pod without annotations, the one
// variant 3's rules implement: every outbound destination, every inbound
// port but Istio's own.
func meshedPod(cgroupID uint64, ip netip.Addr) datapath.Pod {
	out, in := policy.CaptureAll()
	in.ExcludePorts = []uint16{15008, 15020, 15021, 15090}
	return datapath.Pod{Name: "bench/" + ip.String(), CgroupID: cgroupID, IPv4: ip, Capture: true, Outbound: out, Inbound: in}
}

// addPod builds a pod as the kubelet's cgroupfs driver lays it out, with
// HAProxy as its sidecar.
func (w *world) addPod(name, parent string, ip netip.Addr) *pod {
	w.t.Helper()
	ns := w.net.AddHost(name, ip)
	// Room for every connection of a run: ports in TIME_WAIT are reused.
	ns.Sysctl(w.t, "net.ipv4.ip_local_port_range", "1024 65000")
	ns.Sysctl(w.t, "net.ipv4.tcp_tw_reuse", "1")
	podCg := testutil.Cgroup(w.t, parent, filepath.Join("kubepods", "burstable", "pod0000-"+testutil.RandomSuffix()))
	p := &pod{
		ns: ns, cgroup: podCg,
		app:   testutil.Cgroup(w.t, podCg, "app"),
		proxy: testutil.Cgroup(w.t, podCg, "istio-proxy"),
		id:    testutil.CgroupID(w.t, podCg),
	}
	cfg := datapath.IstioDefaults()
	p.sidecar = testutil.StartSidecar(w.t, testutil.SidecarSpec{
		Netns: ns, Cgroup: p.proxy, UID: proxyUID, GID: proxyUID,
		Outbound: int(cfg.OutboundPort), Inbound: int(cfg.InboundPort),
	})
	return p
}

// loadDatapath attaches a datapath of its own to cgroup for variants 4 and
// 5, splicing only for 5. It returns why the variant is unavailable, or "".
func (w *world) loadDatapath(v *variant, cgroup string) string {
	cfg := datapath.IstioDefaults()
	cfg.CgroupPath = cgroup
	cfg.Splice = v.id == splice
	v.pinDir = testutil.PinDir(w.t)
	cfg.PinDir = v.pinDir
	w.t.Cleanup(func() {
		if err := datapath.Uninstall(v.pinDir); err != nil {
			w.t.Logf("uninstall datapath %s: %v", v.pinDir, err)
		}
	})
	dp, err := datapath.Load(cfg)
	if err != nil {
		if v.id == splice {
			// Splicing is an acceleration the kernel may lack: report
			// the variant as unavailable rather than end the run.
			return fmt.Sprintf("load the datapath with splicing: %v", err)
		}
		w.t.Fatalf("load datapath: %v", err)
	}
	w.t.Cleanup(func() { dp.Close() })
	v.dp = dp
	return ""
}

// startExplicitProxy runs a second HAProxy in the pod's sidecar container
// with the sidecar's own global and defaults sections and two listeners
// that forward to fixed upstreams: the explicit proxy of variant 2.
func (w *world) startExplicitProxy(p *pod) *testutil.Proc {
	w.t.Helper()
	cfg := explicitConfig(p.sidecar.Config)
	path := filepath.Join(w.dir, "haproxy-explicit.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		w.t.Fatalf("write explicit proxy config: %v", err)
	}
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		w.t.Fatalf("haproxy not installed: %v", err)
	}
	proc := testutil.Start(w.t, testutil.ProcSpec{
		Netns: p.ns, Cgroup: p.proxy, UID: testutil.Int(proxyUID), GID: testutil.Int(proxyUID),
		Args: []string{bin, "-db", "-f", path},
	})
	testutil.WaitListening(w.t, p.ns, explicitEchoPort)
	testutil.WaitListening(w.t, p.ns, explicitSinkPort)
	return proc
}

// explicitConfig keeps everything of the sidecar's configuration before its
// first listen section and adds the explicit listeners.
func explicitConfig(sidecar string) string {
	base := sidecar
	if i := strings.Index(sidecar, "\nlisten "); i >= 0 {
		base = sidecar[:i+1]
	}
	var b strings.Builder
	b.WriteString(base)
	for _, l := range []struct{ port, upstream int }{{explicitEchoPort, echoPort}, {explicitSinkPort, sinkPort}} {
		fmt.Fprintf(&b, `
listen explicit-%[1]d
    bind 127.0.0.1:%[1]d
    log-format "explicit client=%%ci:%%cp orig_dst=%%fi:%%fp"
    server upstream %[2]s
`, l.port, netip.AddrPortFrom(serverIP, uint16(l.upstream)))
	}
	return b.String()
}
