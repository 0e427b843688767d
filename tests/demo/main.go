// Command demo shows sockbridge end to end on this machine: it probes the
// kernel, builds two demo pods and a server in private network namespaces,
// starts the agent binary on a child cgroup, sends requests through HAProxy
// standing in for Envoy, prints what every side saw, and removes
// everything again. Run it as root: `make demo`.
package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

func main() {
	d := &demo{}
	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(fatal); !ok {
					panic(r)
				}
				code = 1
			}
		}()
		d.run()
	}()
	d.cleanup()
	os.Exit(code)
}

// demo implements testutil.TB: Fatalf unwinds to main, which runs the
// cleanups in reverse order.
type demo struct {
	cleanups []func()
	agent    *testutil.Proc // printed when the demo fails
}

type fatal struct{}

func (d *demo) Helper()                         {}
func (d *demo) Logf(format string, args ...any) { fmt.Printf(format+"\n", args...) }
func (d *demo) Cleanup(f func())                { d.cleanups = append(d.cleanups, f) }
func (d *demo) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demo failed: "+format+"\n", args...)
	if d.agent != nil {
		fmt.Fprintf(os.Stderr, "the agent's log:\n%s", indent(d.agent.Output()))
	}
	panic(fatal{})
}

func (d *demo) cleanup() {
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
	d.cleanups = nil
}

func step(format string, args ...any) {
	fmt.Printf("\n\033[1m== "+format+"\033[0m\n", args...)
}

var (
	webIP = netip.MustParseAddr("10.250.0.1")
	appIP = netip.MustParseAddr("10.250.0.2")
	apiIP = netip.MustParseAddr("10.250.0.3")
)

func (d *demo) run() {
	if os.Geteuid() != 0 {
		d.Fatalf("run as root (it creates cgroups, network namespaces and BPF programs)")
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; d.cleanup(); os.Exit(130) }()

	bin, err := filepath.Abs("bin")
	if err != nil {
		d.Fatalf("%v", err)
	}
	sockbridge, sbpeer := filepath.Join(bin, "sockbridge"), filepath.Join(bin, "sbpeer")
	for _, b := range []string{sockbridge, sbpeer} {
		if _, err := os.Stat(b); err != nil {
			d.Fatalf("%s missing: run `make build` first (make demo does)", b)
		}
	}

	step("1. What this kernel can do (sockbridge probe)")
	probe := exec.Command(sockbridge, "probe")
	probe.Stdout, probe.Stderr = os.Stdout, os.Stderr
	if err := probe.Run(); err != nil {
		d.Fatalf("sockbridge probe: %v", err)
	}

	step("2. Two demo pods and a server, each in its own network namespace")
	cg := testutil.Cgroup(d, "", "sockbridge-demo")
	net := testutil.NewNetwork(d, "sbdemo", netip.MustParsePrefix("10.250.0.0/24"))
	web := net.AddHost("web", webIP)
	testutil.Start(d, testutil.ProcSpec{Netns: web, Args: []string{sbpeer, "serve", "-listen", "0.0.0.0:8080"}})
	testutil.WaitListening(d, web, 8080)
	type pod struct {
		name        string
		ns          *testutil.Netns
		cgroup, app string
		sidecar     *testutil.Sidecar
	}
	var pods []*pod
	for _, p := range []struct {
		name string
		ip   netip.Addr
	}{{"app", appIP}, {"api", apiIP}} {
		ns := net.AddHost(p.name, p.ip)
		podCg := testutil.Cgroup(d, cg, "kubepods/burstable/pod-demo-"+p.name)
		pp := &pod{name: p.name, ns: ns, cgroup: podCg, app: testutil.Cgroup(d, podCg, "app")}
		pp.sidecar = testutil.StartSidecar(d, testutil.SidecarSpec{Netns: ns, Cgroup: testutil.Cgroup(d, podCg, "istio-proxy"),
			UID: 1337, GID: 1337, Outbound: 15001, Inbound: 15006})
		pods = append(pods, pp)
		fmt.Printf("pod %-4s %s  netns %s  cgroup %s  sidecar: HAProxy as uid 1337 on :15001 and :15006\n", p.name, p.ip, ns.Name, podCg)
	}
	app, api := pods[0], pods[1]
	testutil.Start(d, testutil.ProcSpec{Netns: api.ns, Cgroup: api.app, Args: []string{sbpeer, "serve", "-listen", "0.0.0.0:9090"}})
	testutil.WaitListening(d, api.ns, 9090)
	fmt.Printf("server web %s:8080 (not meshed), app server in pod api on :9090\n", webIP)

	step("3. Start the agent on the demo cgroup (no iptables rule anywhere)")
	pinDir := "/sys/fs/bpf/sockbridge-demo"
	d.Cleanup(func() {
		out, err := exec.Command(sockbridge, "uninstall", "--bpffs-dir", pinDir).CombinedOutput()
		fmt.Printf("\n== cleanup: sockbridge uninstall: %s", out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "uninstall: %v\n", err)
		}
	})
	podFile := filepath.Join(os.TempDir(), "sockbridge-demo-pods.json")
	writePods(d, podFile, []map[string]string{
		{"name": "demo/app", "cgroup": app.cgroup, "ip": appIP.String()},
		{"name": "demo/api", "cgroup": api.cgroup, "ip": apiIP.String()},
	})
	d.Cleanup(func() { os.Remove(podFile) })
	agent := testutil.StartAgent(d, sockbridge, "--cgroup", cg, "--bpffs-dir", pinDir, "--pods-file", podFile)
	d.agent = agent.Proc
	// Ready: the datapath attached, the pods in the maps, and inbound
	// capture on the pods, which already ran before the agent did.
	agent.WaitReady(d)
	fmt.Print(indent(agent.Output()))

	step("4. The app in pod app dials web %s:8080", webIP)
	r := d.roundtrip(testutil.ProcSpec{Netns: app.ns, Cgroup: app.app}, sbpeer, netip.AddrPortFrom(webIP, 8080).String())
	fmt.Printf("app:      getpeername() = %s (what it dialled), source %s\n", r.Getpeername, r.Getsockname)
	fmt.Printf("sidecar:  %s\n", last(app.sidecar.WaitLogLines("outbound", 1)))
	fmt.Printf("web:      saw the connection from %s (the pod IP, as with iptables REDIRECT)\n", r.ServerSawPeer)
	fmt.Printf("payload:  %d bytes round-tripped intact=%v\n", r.Bytes, r.Intact)

	step("5. The app dials pod api %s:9090 on the same node", apiIP)
	r = d.roundtrip(testutil.ProcSpec{Netns: app.ns, Cgroup: app.app}, sbpeer, netip.AddrPortFrom(apiIP, 9090).String())
	fmt.Printf("app's sidecar:  %s\n", last(app.sidecar.WaitLogLines("outbound", 2)))
	fmt.Printf("api's sidecar:  %s (short-cut straight to its inbound port 15006)\n", last(api.sidecar.WaitLogLines("inbound", 1)))
	fmt.Printf("api's app:      saw the connection from %s (the sidecar's inbound passthrough)\n", r.ServerSawPeer)
	fmt.Printf("payload:        intact=%v\n", r.Intact)

	step("6. The app dials web as Java does: an AF_INET6 socket to ::ffff:%s", webIP)
	mapped := netip.AddrPortFrom(netip.AddrFrom16(webIP.As16()), 8080).String()
	r = d.roundtrip(testutil.ProcSpec{Netns: app.ns, Cgroup: app.app}, sbpeer, mapped)
	fmt.Printf("app:      getpeername() = %s (exactly what it dialled, mapped form included)\n", r.Getpeername)
	fmt.Printf("sidecar:  %s (its IPv4 listener; SO_ORIGINAL_DST at SOL_IP, as under iptables)\n", last(app.sidecar.WaitLogLines("outbound", 3)))
	fmt.Printf("web:      saw the connection from %s\n", r.ServerSawPeer)

	step("7. web, outside the mesh, dials pod api %s:9090 directly: inbound capture", apiIP)
	r = d.roundtrip(testutil.ProcSpec{Netns: web}, sbpeer, netip.AddrPortFrom(apiIP, 9090).String())
	fmt.Printf("api's sidecar:  %s (sk_lookup handed it over, no NAT)\n", last(api.sidecar.WaitLogLines("inbound", 2)))
	fmt.Printf("api's app:      saw the connection from %s, never from web directly\n", r.ServerSawPeer)
	fmt.Printf("payload:        intact=%v\n", r.Intact)

	step("8. What the datapath holds (sockbridge maps, bpftool)")
	out, err := exec.Command(sockbridge, "maps", "--bpffs-dir", pinDir).Output()
	if err != nil {
		d.Fatalf("sockbridge maps: %v", err)
	}
	fmt.Print(indent(string(out)))
	if out, err := exec.Command("bpftool", "cgroup", "show", cg).CombinedOutput(); err == nil {
		fmt.Printf("bpftool cgroup show %s:\n%s", cg, indent(string(out)))
	}
	if out, err := exec.Command("bpftool", "link", "show", "pinned", filepath.Join(pinDir, "links", "inbound", podID(d, api.cgroup))).CombinedOutput(); err == nil {
		fmt.Printf("inbound capture of pod api (bpftool link show pinned %s/links/inbound/...):\n%s", pinDir, indent(string(out)))
	}
	if !r.Intact {
		d.Fatalf("a payload did not arrive intact")
	}
	if n, m := len(app.sidecar.LogLines("outbound")), len(api.sidecar.LogLines("inbound")); n != 3 || m != 2 {
		d.Fatalf("the sidecars logged %d outbound and %d inbound connections, want 3 and 2", n, m)
	}
	fmt.Println("\ndemo ok: every request went through the sidecars with the original destination preserved")
}

func (d *demo) roundtrip(spec testutil.ProcSpec, sbpeer, addr string) peer.Roundtrip {
	spec.Args = []string{sbpeer, "roundtrip", "-addr", addr, "-bytes", "65536"}
	out, err := testutil.Output(d, 30*time.Second, spec)
	if err != nil {
		d.Fatalf("roundtrip to %s: %v", addr, err)
	}
	var r peer.Roundtrip
	if err := json.Unmarshal(out, &r); err != nil {
		d.Fatalf("decode %q: %v", out, err)
	}
	return r
}

func writePods(d *demo, path string, pods []map[string]string) {
	b, err := json.Marshal(map[string]any{"pods": pods})
	if err != nil {
		d.Fatalf("%v", err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		d.Fatalf("write pod file: %v", err)
	}
}

// podID is a pod cgroup's id as the datapath names it.
func podID(d *demo, cgroup string) string {
	return fmt.Sprint(testutil.CgroupID(d, cgroup))
}

func last(lines []string) string {
	if len(lines) == 0 {
		return "(nothing logged)"
	}
	return lines[len(lines)-1]
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}
