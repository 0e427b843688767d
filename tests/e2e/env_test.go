// Package e2e holds sockbridge's privileged end-to-end tests: real BPF
// programs on this kernel, real HAProxy as the sidecar, real traffic between
// network namespaces. They attach only to child cgroups they create and
// send traffic only inside namespaces they create.
package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/bpfobj"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// Binaries built once for the package.
var bin struct{ sbpeer, sockbridge string }

func TestMain(m *testing.M) {
	testutil.MainWithBinaries(m, "e2e", map[string]*string{"../sbpeer": &bin.sbpeer, "../../cmd/sockbridge": &bin.sockbridge})
}

const (
	serverPort = 8080
	proxyUID   = 1337
)

// The policy of a meshed pod without annotations.
var outboundAll, inboundAll = policy.CaptureAll()

var (
	subnet   = netip.MustParsePrefix("10.250.0.0/24")
	serverIP = netip.MustParseAddr("10.250.0.1")
)

// env is one test's world: a test cgroup the datapath attaches to, a
// private network with a server host, and the loaded datapath.
type env struct {
	t      *testing.T
	dir    string
	cgroup string
	pinDir string
	net    *testutil.Network
	server *testutil.Netns
	dp     *datapath.Datapath
	cfg    datapath.Config
}

// newEnv builds the world and loads the datapath into it in-process.
func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, func(*datapath.Config) {})
}

// newEnvWith is newEnv with the datapath configuration changed by edit.
func newEnvWith(t *testing.T, edit func(*datapath.Config)) *env {
	t.Helper()
	e := newBareEnv(t)
	edit(&e.cfg)
	dp, err := datapath.Load(e.cfg)
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	e.dp = dp
	return e
}

// newBareEnv builds the world without loading the datapath: for tests that
// run the agent binary.
func newBareEnv(t *testing.T) *env {
	t.Helper()
	return newBareEnvIn(t, "", false)
}

// newBareEnvFamilies is newBareEnv; with ipv6 the server host is
// dual-stack (serverIP and serverIP6) and its servers listen on [::].
func newBareEnvFamilies(t *testing.T, ipv6 bool) *env {
	t.Helper()
	return newBareEnvIn(t, "", ipv6)
}

// newBareEnvIn is newBareEnvFamilies with the test cgroup (sockbridge's
// attach point, standing in for the node's cgroup root) created below
// parent, a cgroup the test created; "" means below the cgroup2 root.
func newBareEnvIn(t *testing.T, parent string, ipv6 bool) *env {
	t.Helper()
	testutil.RequirePrivileged(t, "haproxy", "bpftool", "ss", "sysctl")
	e := &env{t: t, dir: t.TempDir()}
	e.cgroup = testutil.Cgroup(t, parent, "sockbridge-test-"+testutil.RandomSuffix())
	suffix := testutil.RandomSuffix()
	e.pinDir = testutil.PinDir(t)
	t.Cleanup(func() {
		if err := datapath.Uninstall(e.pinDir); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	e.net = testutil.NewNetwork(t, "sbt"+suffix[:5], subnet)
	listen := fmt.Sprintf("0.0.0.0:%d", serverPort)
	if ipv6 {
		e.server = e.net.AddHost("srv", serverIP, serverIP6)
		listen = fmt.Sprintf("[::]:%d", serverPort)
	} else {
		e.server = e.net.AddHost("srv", serverIP)
	}
	testutil.Start(t, testutil.ProcSpec{Netns: e.server, Args: []string{bin.sbpeer, "serve", "-listen", listen}})
	testutil.WaitListening(t, e.server, serverPort)

	e.cfg = datapath.IstioDefaults()
	e.cfg.CgroupPath = e.cgroup
	e.cfg.PinDir = e.pinDir
	return e
}

// pod is a test pod: a namespace with the pod IP, a pod-level cgroup named
// as the kubelet's cgroupfs driver names it, and container cgroups below
// it for the app and the sidecar.
type pod struct {
	name    string
	ns      *testutil.Netns
	cgroup  string // pod-level cgroup
	app     string // the app container's cgroup
	proxy   string // the sidecar container's cgroup
	id      uint64
	sidecar *testutil.Sidecar
}

type podOpts struct {
	inMap   bool // listed in the datapath's pod map
	capture bool
	sidecar bool
	tfo     bool // the sidecar takes and makes TCP Fast Open connections
}

func (e *env) addPod(name string, ip netip.Addr, o podOpts) *pod {
	e.t.Helper()
	ns := e.net.AddHost(name, ip)
	// Room for 100,000 sequential connections: ports in TIME_WAIT are
	// reused for new outgoing connections.
	ns.Sysctl(e.t, "net.ipv4.ip_local_port_range", "1024 65000")
	ns.Sysctl(e.t, "net.ipv4.tcp_tw_reuse", "1")
	uid := "0000-" + testutil.RandomSuffix()
	podCg := testutil.Cgroup(e.t, e.cgroup, filepath.Join("kubepods", "burstable", "pod"+uid))
	p := &pod{
		name: name, ns: ns, cgroup: podCg,
		app:   testutil.Cgroup(e.t, podCg, "app"),
		proxy: testutil.Cgroup(e.t, podCg, "istio-proxy"),
		id:    testutil.CgroupID(e.t, podCg),
	}
	if o.inMap {
		if err := e.dp.UpsertPod(datapath.Pod{CgroupID: p.id, IPv4: ip, Capture: o.capture, Outbound: outboundAll, Inbound: inboundAll}); err != nil {
			e.t.Fatalf("upsert pod %s: %v", name, err)
		}
	}
	if o.sidecar {
		p.sidecar = testutil.StartSidecar(e.t, testutil.SidecarSpec{
			Netns: ns, Cgroup: p.proxy, UID: proxyUID, GID: proxyUID,
			Outbound: int(e.cfg.OutboundPort), Inbound: int(e.cfg.InboundPort), TFO: o.tfo,
		})
	}
	return p
}

// run runs sbpeer in the pod's app container and decodes its JSON output.
func (p *pod) run(t *testing.T, out any, args ...string) {
	t.Helper()
	runIn(t, testutil.ProcSpec{Netns: p.ns, Cgroup: p.app}, out, args...)
}

func runIn(t *testing.T, spec testutil.ProcSpec, out any, args ...string) {
	t.Helper()
	spec.Args = append([]string{bin.sbpeer}, args...)
	b, err := testutil.Output(t, 10*time.Minute, spec)
	if err != nil {
		t.Fatalf("sbpeer %s: %v", strings.Join(args, " "), err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("sbpeer %s: decode %q: %v", strings.Join(args, " "), b, err)
	}
}

func (e *env) stats() bpfobj.Values {
	e.t.Helper()
	s, err := e.dp.Stats()
	if err != nil {
		e.t.Fatalf("stats: %v", err)
	}
	return s
}

// pinnedStats reads the counters from the pinned maps, as `sockbridge maps`
// does: for tests whose datapath an agent process loaded.
func (e *env) pinnedStats(t *testing.T) bpfobj.Values {
	t.Helper()
	snap, err := datapath.ReadPinned(e.pinDir)
	if err != nil {
		t.Fatalf("read pinned maps: %v", err)
	}
	return snap.Stats
}

func hostOf(addrPort string) string {
	ap, err := netip.ParseAddrPort(addrPort)
	if err != nil {
		return "invalid:" + addrPort
	}
	return ap.Addr().String()
}

func serverAddr() string { return netip.AddrPortFrom(serverIP, serverPort).String() }

// agentStartTimeout bounds how long an agent may take to probe the kernel,
// load the datapath and sync its pods before a test gives up on it: a
// second here, a minute under qemu's software emulation (test-kernels).
const agentStartTimeout = 90 * time.Second
