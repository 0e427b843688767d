package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// The DNS row: queries per second and latency through the sidecar's DNS
// proxy, sockbridge's DNS capture against istio-iptables' DNS rules, in
// the same run, interleaved. Each variant has its own pod (netns,
// kubelet-style cgroups) with dnsmasq as the DNS proxy (uid 1337,
// 127.0.0.1:15053) answering a name it holds itself; the app (sbpeer
// dnsload) asks the pod's nameserver, dnsNameserver:53, from connected UDP
// sockets as glibc and Go do. A query that is not captured goes nowhere
// (no host has that address) and counts as failed.
const (
	dnsProxyPort   = 15053
	dnsLoadSockets = 2
	dnsName        = "proxy-only.bench"
)

var (
	dnsSubnet     = netip.MustParsePrefix("10.250.5.0/24")
	dnsNameserver = netip.MustParseAddr("10.250.5.53")
)

// DNS variants.
const (
	dnsExplicit = "explicit: app asks 127.0.0.1:15053"
	dnsIptables = "iptables (Istio's DNS rules)"
	dnsSockb    = "sockbridge"
)

var dnsVariants = []string{dnsExplicit, dnsIptables, dnsSockb}

// dnsSample is one variant's run in one round.
type dnsSample struct {
	Round    int
	Variant  string
	PerSec   float64
	P50us    float64
	P99us    float64
	Failed   int64
	CTNew    int // conntrack NEW events (UDP) in the pod during the run
	FirstErr string
	// ctFromTable: CTNew is the table's size, `conntrack -E` lost events.
	ctFromTable bool
}

// dnsResults is what the DNS benchmark measured.
type dnsResults struct {
	Settings settings
	Samples  []dnsSample
	Failures []string
	Rules    string // the iptables variant's rules, as iptables-save shows them
	Captured uint64 // sockbridge's dns_connected counter at the end
	// CTFromTable counts runs whose conntrack entries were counted from
	// the table because `conntrack -E` lost events (ENOBUFS).
	CTFromTable int
}

type dnsPod struct {
	ns            *testutil.Netns
	app, proxy    string
	server        string // what the app asks
	dp            *datapath.Datapath
	variant, name string
}

// runDNSBench builds the DNS world, runs every round and returns what it
// measured; environment failures end the run through t.
func runDNSBench(t testutil.TB, s settings) *dnsResults {
	t.Helper()
	res := &dnsResults{Settings: s}
	dir := scratchDir(t)
	sbpeer := s.Sbpeer
	if sbpeer == "" {
		sbpeer = buildSbpeer(t, dir)
	}
	suffix := testutil.RandomSuffix()
	root := testutil.Cgroup(t, "", "sockbridge-bench-dns-"+suffix)
	refuseCgroupRoot(t, root)
	nw := testutil.NewNetwork(t, netnsPrefix+suffix[:5], dnsSubnet)
	ip := func(i byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 250, 5, i}) }

	sbAttach := testutil.Cgroup(t, root, "sb-attach")
	dp := loadRowDatapath(t, sbAttach, false)

	plain := testutil.Cgroup(t, root, "plain")
	pods := []*dnsPod{
		newDNSPod(t, nw, "dnsexp", plain, ip(11), dnsExplicit, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dnsProxyPort)),
		newDNSPod(t, nw, "dnsipt", plain, ip(12), dnsIptables, netip.AddrPortFrom(dnsNameserver, 53)),
		newDNSPod(t, nw, "dnssb", sbAttach, ip(13), dnsSockb, netip.AddrPortFrom(dnsNameserver, 53)),
	}
	res.Rules = applyIstioDNSRules(t, pods[1].ns)
	sb := pods[2]
	sb.dp = dp
	p := meshedPod(testutil.CgroupID(t, filepath.Dir(sb.app)), ip(13))
	p.DNS = policy.DNS{Capture: true, Nameservers: []netip.Addr{dnsNameserver}}
	if err := dp.UpsertPod(p); err != nil {
		t.Fatalf("put the DNS pod in the map: %v", err)
	}

	dur := s.Duration
	for r := 1; r <= s.Rounds; r++ {
		k := (r - 1) % len(pods)
		for _, pd := range append(append([]*dnsPod{}, pods[k:]...), pods[:k]...) {
			smp, err := pd.run(t, sbpeer, dur)
			smp.Round = r
			if err == nil && (smp.PerSec == 0 || smp.Failed > 0) {
				err = fmt.Errorf("%d queries answered, %d failed (first: %s)", int(smp.PerSec*dur.Seconds()), smp.Failed, smp.FirstErr)
			}
			if err != nil {
				msg := fmt.Sprintf("round %d, DNS, %s: %v", r, pd.variant, err)
				res.Failures = append(res.Failures, msg)
				t.Logf("FAILED %s", msg)
				continue
			}
			res.Samples = append(res.Samples, smp)
			if smp.ctFromTable {
				res.CTFromTable++
			}
			t.Logf("round %d dns        %-36s %.0f queries/s p50 %.0f µs p99 %.0f µs, %d conntrack entries", r, pd.variant, smp.PerSec, smp.P50us, smp.P99us, smp.CTNew)
		}
	}
	if st, err := dp.Stats(); err == nil {
		res.Captured = st.Get("dns_connected")
	}
	return res
}

// newDNSPod builds a pod with the DNS proxy in its sidecar container.
func newDNSPod(t testutil.TB, nw *testutil.Network, name, parent string, ip netip.Addr, variant string, server netip.AddrPort) *dnsPod {
	t.Helper()
	ns := nw.AddHost(name, ip)
	podCg := testutil.Cgroup(t, parent, filepath.Join("kubepods", "burstable", "pod0000-"+testutil.RandomSuffix()))
	pd := &dnsPod{ns: ns, app: testutil.Cgroup(t, podCg, "app"), proxy: testutil.Cgroup(t, podCg, "istio-proxy"),
		server: server.String(), variant: variant, name: name}
	testutil.StartDnsmasq(t, testutil.DnsmasqSpec{
		Netns: ns, Cgroup: pd.proxy, UID: testutil.Int(proxyUID), GID: testutil.Int(proxyUID),
		Listen: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Port: dnsProxyPort,
		Records: []string{dnsName + ",10.250.77.1"}, Quiet: true,
	})
	return pd
}

// run asks for dur and counts the conntrack entries (UDP, both families)
// made meanwhile in the pod's namespace (countConntrack).
func (pd *dnsPod) run(t testutil.TB, sbpeer string, dur time.Duration) (dnsSample, error) {
	smp := dnsSample{Variant: pd.variant}
	var out []byte
	ct, err := countConntrack(t, "dns "+pd.variant, ctScope{ns: pd.ns, proto: "udp"}, func() (err error) {
		out, err = testutil.Output(t, dur+time.Minute, testutil.ProcSpec{Netns: pd.ns, Cgroup: pd.app,
			Args: []string{sbpeer, "dnsload", "-server", pd.server, "-name", dnsName, "-conc", fmt.Sprint(dnsLoadSockets), "-duration", dur.String()}})
		return err
	})
	if err != nil {
		return smp, err
	}
	var r struct {
		OK       int     `json:"ok"`
		Failed   int64   `json:"failed"`
		FirstErr string  `json:"first_error"`
		PerSec   float64 `json:"per_second"`
		P50us    float64 `json:"p50_us"`
		P99us    float64 `json:"p99_us"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return smp, fmt.Errorf("decode dnsload output %q: %w", out, err)
	}
	smp.PerSec, smp.P50us, smp.P99us, smp.Failed, smp.FirstErr = r.PerSec, r.P50us, r.P99us, r.Failed, r.FirstErr
	smp.CTNew, smp.ctFromTable = ct.n, ct.fromTable
	return smp, nil
}

// istioDNSRules are istio-iptables' rules for DNS capture of one
// nameserver (--redirect-dns without --capture-all-dns; the pod's
// resolv.conf names dnsNameserver), as tools/istio-iptables/pkg/capture
// run.go writes them: the proxy uid/gid RETURN rules ahead of the DNS jump
// in nat ISTIO_OUTPUT, REDIRECT of UDP and TCP port 53 to 15053
// (SetupDNSRedir), and the conntrack zones that keep the app's and the
// proxy's DNS flows apart (addDNSConntrackZones).
func istioDNSRules() string {
	ns := dnsNameserver.String() + "/32"
	return fmt.Sprintf(`*raw
:ISTIO_OUTPUT_DNS - [0:0]
:ISTIO_INBOUND - [0:0]
-A OUTPUT -j ISTIO_OUTPUT_DNS
-A PREROUTING -j ISTIO_INBOUND
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d %[1]s -j CT --zone 2
-A ISTIO_INBOUND -p udp --sport 53 -s %[1]s -j CT --zone 1
COMMIT
*nat
:ISTIO_OUTPUT - [0:0]
:ISTIO_OUTPUT_DNS - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d %[1]s -j REDIRECT --to-ports %[2]d
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d %[1]s -j REDIRECT --to-ports %[2]d
COMMIT
`, ns, dnsProxyPort)
}

// applyIstioDNSRules loads the DNS rules into ns (never the host's) and
// returns the raw and nat tables as iptables-save shows them.
func applyIstioDNSRules(t testutil.TB, ns *testutil.Netns) string {
	t.Helper()
	if !strings.HasPrefix(ns.Name, netnsPrefix) {
		t.Fatalf("refusing to load iptables rules into namespace %q, which the benchmark did not create", ns.Name)
	}
	cmd := exec.Command("nsenter", "--net="+ns.Path(), "--", "iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(istioDNSRules())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-restore in %s: %v\n%s", ns.Name, err, out)
	}
	return ns.Exec(t, "iptables-save", "-t", "raw") + ns.Exec(t, "iptables-save", "-t", "nat")
}

// markdown is the DNS section of the report: medians over rounds with
// min–max.
func (d *dnsResults) markdown() string {
	var b strings.Builder
	s := d.Settings
	fmt.Fprintf(&b, "\n## DNS through the sidecar's DNS proxy\n\n")
	fmt.Fprintf(&b, "dnsmasq as the DNS proxy (uid 1337, 127.0.0.1:%d) answering a name it holds; "+
		"`sbpeer dnsload` asks the pod's nameserver %s:53 from %d connected UDP sockets for %s per run; "+
		"%d round(s), medians (min–max). Conntrack entries: UDP NEW events in the pod during one run.\n\n",
		dnsProxyPort, dnsNameserver, dnsLoadSockets, s.Duration, s.Rounds)
	b.WriteString("| variant | queries/s | p50 µs | p99 µs | conntrack entries per run |\n|---|---:|---:|---:|---:|\n")
	for _, v := range dnsVariants {
		var qps, p50, p99, ct []float64
		for _, smp := range d.Samples {
			if smp.Variant == v {
				qps, p50, p99, ct = append(qps, smp.PerSec), append(p50, smp.P50us), append(p99, smp.P99us), append(ct, float64(smp.CTNew))
			}
		}
		if len(qps) == 0 {
			fmt.Fprintf(&b, "| %s | — | — | — | — |\n", v)
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", v, medRange(qps, "%.0f"), medRange(p50, "%.0f"), medRange(p99, "%.0f"), medRange(ct, "%.0f"))
	}
	fmt.Fprintf(&b, "\nsockbridge's `dns_connected` counter at the end: %d (each load socket's connect() sent to the proxy).\n", d.Captured)
	writeCTFromTable(&b, d.CTFromTable)
	writeFailureList(&b, "\nDNS failures:\n\n", d.Failures)
	return b.String()
}

func medRange(v []float64, f string) string {
	v = slices.Clone(v)
	slices.Sort(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	if len(v) == 1 {
		return fmt.Sprintf(f, med)
	}
	return fmt.Sprintf(f+" ("+f+"–"+f+")", med, v[0], v[len(v)-1])
}

// writeFiles appends the DNS section to results.md and writes dns.csv and
// iptables-dns.rules.
func (d *dnsResults) writeFiles(dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, "results.md"), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("append DNS results: %w", err)
	}
	_, werr := f.WriteString(d.markdown())
	if err := f.Close(); werr != nil || err != nil {
		return fmt.Errorf("append DNS results: %w", errors.Join(werr, err))
	}
	var csv strings.Builder
	csv.WriteString("round,variant,queries_per_second,p50_us,p99_us,conntrack_new\n")
	for _, s := range d.Samples {
		fmt.Fprintf(&csv, "%d,%q,%.1f,%.1f,%.1f,%d\n", s.Round, s.Variant, s.PerSec, s.P50us, s.P99us, s.CTNew)
	}
	if err := os.WriteFile(filepath.Join(dir, "dns.csv"), []byte(csv.String()), 0o644); err != nil {
		return fmt.Errorf("write dns.csv: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "iptables-dns.rules"), []byte(d.Rules), 0o644); err != nil {
		return fmt.Errorf("write iptables-dns.rules: %w", err)
	}
	return nil
}
