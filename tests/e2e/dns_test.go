package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/bpfobj"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// The DNS world: a "cluster DNS" (dnsmasq on port 53 of its own host, both
// families) that knows cluster-only.test; another port-53 server that is
// no pod's nameserver (other-server.test); a server on port 5353 of the
// cluster DNS's own addresses (port-5353.test); and in each pod the
// sidecar's DNS proxy stand-in, dnsmasq as uid 1337 on 127.0.0.1 and ::1
// port 15053, which alone knows proxy-only.test and big.test (100 A
// records: too many for one UDP answer) and forwards everything else to
// the cluster DNS.
var (
	clusterDNS4  = netip.MustParseAddr("10.250.0.53")
	otherDNS4    = netip.MustParseAddr("10.250.0.54")
	clusterDNS6  = netip.MustParseAddr("fd00:250::53")
	otherDNS6    = netip.MustParseAddr("fd00:250::54")
	proxyOnly4   = netip.MustParseAddr("10.250.77.1")
	proxyOnly6   = netip.MustParseAddr("fd00:250::77:1")
	clusterOnly4 = netip.MustParseAddr("10.250.99.1")
)

const (
	dnsProxyPort = 15053
	bigRecords   = 100
)

type dnsWorld struct {
	*env
	host                   *testutil.Netns
	cluster, other, p5353  *testutil.Dnsmasq
	proxyRecords           []string
	nameserver4, nameserv6 netip.AddrPort
}

func newDNSWorld(t *testing.T) *dnsWorld {
	t.Helper()
	w := newBareDNSWorld(t)
	dp, err := datapath.Load(w.cfg)
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	w.dp = dp
	return w
}

// newBareDNSWorld builds the DNS world without loading the datapath: for
// tests that run the agent binary (w.dp stays nil, pods come from a pod
// file).
func newBareDNSWorld(t *testing.T) *dnsWorld {
	t.Helper()
	testutil.RequirePrivileged(t, "dnsmasq", "dig", "getent", "unshare", "mount", "conntrack", "iptables")
	e := newBareEnvFamilies(t, true)
	w := &dnsWorld{env: e}
	w.host = e.net.AddHost("dns", clusterDNS4, otherDNS4, clusterDNS6, otherDNS6)
	w.cluster = testutil.StartDnsmasq(t, testutil.DnsmasqSpec{Netns: w.host, Listen: []netip.Addr{clusterDNS4, clusterDNS6}, Port: 53,
		Records: []string{"cluster-only.test,10.250.99.1,fd00:250::99:1"}, Local: []string{"test"}})
	w.other = testutil.StartDnsmasq(t, testutil.DnsmasqSpec{Netns: w.host, Listen: []netip.Addr{otherDNS4, otherDNS6}, Port: 53,
		Records: []string{"other-server.test,10.250.98.1"}, Local: []string{"test"}})
	w.p5353 = testutil.StartDnsmasq(t, testutil.DnsmasqSpec{Netns: w.host, Listen: []netip.Addr{clusterDNS4, clusterDNS6}, Port: 5353,
		Records: []string{"port-5353.test,10.250.97.1"}, Local: []string{"test"}})
	w.proxyRecords = []string{"proxy-only.test," + proxyOnly4.String() + "," + proxyOnly6.String()}
	for i := 1; i <= bigRecords; i++ {
		w.proxyRecords = append(w.proxyRecords, fmt.Sprintf("big.test,10.250.78.%d,fd00:250::78:%d", i, i))
	}
	w.nameserver4 = netip.AddrPortFrom(clusterDNS4, 53)
	w.nameserv6 = netip.AddrPortFrom(clusterDNS6, 53)
	return w
}

// dnsPod is a pod whose resolv.conf names one nameserver, with the
// sidecar's DNS proxy in its istio-proxy container.
type dnsPod struct {
	*pod
	nameserver netip.Addr
	proxy      *testutil.Dnsmasq
	resolv     string // the pod's resolv.conf, bind-mounted over /etc/resolv.conf
	nsswitch   string
	v4, v6     netip.Addr
}

func (w *dnsWorld) addDNSPod(name string, v4, v6, nameserver netip.Addr, dns policy.DNS) *dnsPod {
	t := w.t
	t.Helper()
	var addrs []netip.Addr
	for _, a := range []netip.Addr{v4, v6} {
		if a.IsValid() {
			addrs = append(addrs, a)
		}
	}
	ns := w.net.AddHost(name, addrs...)
	uid := "0000-" + testutil.RandomSuffix()
	podCg := testutil.Cgroup(t, w.cgroup, filepath.Join("kubepods", "burstable", "pod"+uid))
	p := &dnsPod{pod: &pod{
		name: name, ns: ns, cgroup: podCg,
		app:   testutil.Cgroup(t, podCg, "app"),
		proxy: testutil.Cgroup(t, podCg, "istio-proxy"),
		id:    testutil.CgroupID(t, podCg),
	}, nameserver: nameserver, v4: v4, v6: v6}
	w.setDNS(p, dns)
	p.proxy = testutil.StartDnsmasq(t, testutil.DnsmasqSpec{
		Netns: ns, Cgroup: p.pod.proxy, UID: testutil.Int(proxyUID), GID: testutil.Int(proxyUID),
		Listen: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}, Port: dnsProxyPort,
		Upstreams: []netip.AddrPort{netip.AddrPortFrom(nameserver, 53)}, Records: w.proxyRecords,
	})
	dir := testutil.ReadableTempDir(t, "sockbridge-dns-pod-")
	p.resolv = filepath.Join(dir, "resolv.conf")
	p.nsswitch = filepath.Join(dir, "nsswitch.conf")
	// One try of two seconds: a reply that a resolver drops shows as a
	// failure, not as a slow success.
	writeFile(t, p.resolv, fmt.Sprintf("nameserver %s\noptions timeout:2 attempts:1\n", nameserver))
	writeFile(t, p.nsswitch, "hosts: dns\n")
	return p
}

func (w *dnsWorld) setDNS(p *dnsPod, dns policy.DNS) {
	w.t.Helper()
	if w.dp == nil {
		return // the agent's pod file says
	}
	if err := w.dp.UpsertPod(datapath.Pod{Name: p.name, CgroupID: p.id, IPv4: p.v4, IPv6: p.v6, Capture: true,
		Outbound: outboundAll, Inbound: inboundAll, DNS: dns}); err != nil {
		w.t.Fatalf("upsert pod %s: %v", p.name, err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// inPod runs a command in the pod's app container with the pod's own
// /etc/resolv.conf and an nsswitch.conf of "hosts: dns", bind-mounted in a
// private mount namespace that ends with the command.
func (p *dnsPod) inPod(t *testing.T, args ...string) (string, error) {
	t.Helper()
	script := `mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf && shift 2 && exec "$@"`
	spec := testutil.ProcSpec{Netns: p.ns, Cgroup: p.app, Env: []string{"GODEBUG=netdns=go"},
		Args: append([]string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", p.resolv, p.nsswitch}, args...)}
	out, err := testutil.Output(t, time.Minute, spec)
	return string(out), err
}

// getent resolves with glibc (getaddrinfo through nsswitch's dns) for the
// pod's own family (an IPv6-only pod: AAAA, since getaddrinfo skips a
// family the host has no address of): a connected UDP socket, TCP when an
// answer is truncated, and a reply is only taken from the nameserver
// asked.
func (p *dnsPod) getent(t *testing.T, name string) []string {
	t.Helper()
	db := "ahostsv4"
	if !p.v4.IsValid() {
		db = "ahostsv6"
	}
	out, err := p.inPod(t, "getent", db, name)
	if err != nil {
		t.Errorf("getent %s %s: %v\n%s", db, name, err, out)
		return nil
	}
	var addrs []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[1] == "STREAM" {
			addrs = append(addrs, f[0])
		}
	}
	return addrs
}

// goResolve resolves with Go's pure resolver.
func (p *dnsPod) goResolve(t *testing.T, name string) []string {
	t.Helper()
	out, err := p.inPod(t, bin.sbpeer, "resolve", "-name", name)
	var r struct {
		Addrs []string `json:"addrs"`
		Error string   `json:"error"`
	}
	if err != nil || decodeJSON(out, &r) != nil || r.Error != "" {
		t.Errorf("Go resolver, %s: %v %s\n%s", name, err, r.Error, out)
	}
	return r.Addrs
}

// dig asks server with BIND's dig, which takes a UDP reply only from the
// server it asked; it returns the A answers and the whole output.
func dig(t *testing.T, spec testutil.ProcSpec, server netip.AddrPort, name string, extra ...string) ([]string, string) {
	t.Helper()
	spec.Args = append([]string{"dig", "+time=2", "+tries=1", "-p", fmt.Sprint(server.Port()), "@" + server.Addr().String(), name, "A"}, extra...)
	out, err := testutil.Output(t, time.Minute, spec)
	if err != nil {
		return nil, fmt.Sprintf("%v\n%s", err, out)
	}
	var addrs []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 5 && f[3] == "A" && !strings.HasPrefix(l, ";") {
			addrs = append(addrs, f[4])
		}
	}
	slices.Sort(addrs)
	return addrs, string(out)
}

func (p *dnsPod) dig(t *testing.T, server netip.AddrPort, name string, extra ...string) ([]string, string) {
	t.Helper()
	return dig(t, testutil.ProcSpec{Netns: p.ns, Cgroup: p.app}, server, name, extra...)
}

func (p *dnsPod) query(t *testing.T, server netip.AddrPort, name, family string, extra ...string) dnsQueryResult {
	t.Helper()
	var r dnsQueryResult
	p.run(t, &r, append([]string{"dnsquery", "-server", server.String(), "-name", name, "-family", family}, extra...)...)
	return r
}

type dnsQueryResult struct {
	ReplyFrom   string   `json:"reply_from"`
	Getpeername string   `json:"getpeername"`
	RCode       string   `json:"rcode"`
	Truncated   bool     `json:"truncated"`
	Answers     []string `json:"answers"`
	Error       string   `json:"error"`
}

func decodeJSON(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// bigAnswers are big.test's addresses of one family (6: IPv6).
func bigAnswers(family int) []string {
	var out []string
	for i := 1; i <= bigRecords; i++ {
		if family == 6 {
			out = append(out, netip.MustParseAddr(fmt.Sprintf("fd00:250::78:%d", i)).String())
		} else {
			out = append(out, fmt.Sprintf("10.250.78.%d", i))
		}
	}
	slices.Sort(out)
	return out
}

// glibcWants is what getent returns for an address of each family in p.
func (p *dnsPod) glibcWants(v4, v6 string) string {
	if p.v4.IsValid() {
		return v4
	}
	return v6
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// delta is after - before for each named counter.
func delta(before, after bpfobj.Values, names ...string) map[string]uint64 {
	out := map[string]uint64{}
	for _, n := range names {
		out[n] = after.Get(n) - before.Get(n)
	}
	return out
}

var dnsCounters = []string{"dns_captured", "dns_connected", "dns_restored", "captured"}

// A pod that captures DNS resolves through its sidecar's DNS proxy with
// every real resolver, in both families: glibc (getent: connected UDP, TCP
// on truncation), Go's pure resolver, dig over UDP and TCP, and raw
// queries from every socket kind (AF_INET, AF_INET6 native and v4-mapped,
// unconnected, connected, TCP). Each gets the name only the proxy knows,
// and the reply's source (recvfrom) and the socket's getpeername() are the
// nameserver it asked, or the resolver would have dropped it. A truncated
// UDP answer followed by the TCP retry works end to end. The proxy's own
// upstream queries reach the cluster DNS directly, and no conntrack entry
// is made.
func TestDNSCapture(t *testing.T) {
	w := newDNSWorld(t)
	dual := w.addDNSPod("dual", podAIP, podA6, clusterDNS4, policy.DNS{Capture: true, Nameservers: []netip.Addr{clusterDNS4}})
	only6 := w.addDNSPod("v6only", netip.Addr{}, podB6, clusterDNS6, policy.DNS{Capture: true, Nameservers: []netip.Addr{clusterDNS6}})
	watches := map[string]*testutil.ConntrackWatch{}
	for _, p := range []*dnsPod{dual, only6} {
		for _, fam := range []string{"ipv4", "ipv6"} {
			for _, proto := range []string{"udp", "tcp"} {
				watches[p.name+"/"+fam+"/"+proto] = testutil.WatchConntrackProto(t, p.ns, fam, proto)
			}
		}
	}

	for _, p := range []*dnsPod{dual, only6} {
		ns := netip.AddrPortFrom(p.nameserver, 53)
		want := proxyOnly4.String()
		t.Run(p.name+"/glibc", func(t *testing.T) {
			before := w.stats()
			want := p.glibcWants(proxyOnly4.String(), proxyOnly6.String())
			if got := p.getent(t, "proxy-only.test"); !slices.Equal(got, []string{want}) {
				t.Errorf("getent proxy-only.test = %v, want [%s] from the DNS proxy", got, want)
			}
			d := delta(before, w.stats(), dnsCounters...)
			if d["dns_connected"] == 0 || d["dns_restored"] == 0 || d["captured"] != 0 {
				t.Errorf("counters %v: want glibc's connected UDP socket sent to the proxy and replies restored, no TCP capture", d)
			}
		})
		t.Run(p.name+"/Go resolver", func(t *testing.T) {
			got := p.goResolve(t, "proxy-only.test")
			if !slices.Contains(got, want) || !slices.Contains(got, proxyOnly6.String()) {
				t.Errorf("Go resolver proxy-only.test = %v, want %s and %s", got, want, proxyOnly6)
			}
		})
		t.Run(p.name+"/dig UDP and TCP", func(t *testing.T) {
			for _, extra := range [][]string{nil, {"+tcp"}} {
				got, out := p.dig(t, ns, "proxy-only.test", extra...)
				if !slices.Equal(got, []string{want}) {
					t.Errorf("dig %v proxy-only.test = %v, want [%s]\n%s", extra, got, want, out)
				}
			}
		})
		t.Run(p.name+"/forwarded through the proxy", func(t *testing.T) {
			before := len(w.cluster.QueriesFor("cluster-only.test"))
			want := p.glibcWants(clusterOnly4.String(), "fd00:250::99:1")
			if got := p.getent(t, "cluster-only.test"); !slices.Equal(got, []string{want}) {
				t.Errorf("getent cluster-only.test = %v, want [%s]", got, want)
			}
			// The proxy asked the cluster DNS itself (uid 1337: never
			// captured, or it would have asked itself in a loop), from the
			// pod's address.
			qs := w.cluster.QueriesFor("cluster-only.test")[before:]
			if len(qs) == 0 || !slices.Contains([]netip.Addr{p.v4, p.v6}, qs[0].From) {
				t.Errorf("cluster DNS saw %+v for cluster-only.test, want the proxy's query from the pod's address", qs)
			}
			if qs := p.proxy.QueriesFor("cluster-only.test"); len(qs) == 0 || !qs[0].From.IsLoopback() {
				t.Errorf("the DNS proxy saw %+v, want the app's queries from loopback", qs)
			}
			if qs := w.cluster.QueriesFor("proxy-only.test"); len(qs) != 0 {
				t.Errorf("the cluster DNS was asked for proxy-only.test: %+v", qs)
			}
		})
		t.Run(p.name+"/truncated UDP then TCP", func(t *testing.T) {
			before := w.stats()
			fam := 4
			if !p.v4.IsValid() {
				fam = 6
			}
			if got := sorted(p.getent(t, "big.test")); !slices.Equal(got, bigAnswers(fam)) {
				t.Errorf("getent big.test: %d addresses, want the %d the proxy has", len(got), bigRecords)
			}
			if got := sorted(p.goResolve(t, "big.test")); !slices.Equal(got, sorted(append(bigAnswers(4), bigAnswers(6)...))) {
				t.Errorf("Go resolver big.test: %d addresses, want %d", len(got), 2*bigRecords)
			}
			got, out := p.dig(t, ns, "big.test")
			if !slices.Equal(got, bigAnswers(4)) || !strings.Contains(out, "Truncated, retrying in TCP mode") {
				t.Errorf("dig big.test: %d answers, want %d after a truncated UDP answer and a TCP retry\n%s", len(got), bigRecords, out)
			}
			// Three resolvers, each a UDP query answered truncated and a
			// TCP connection to the nameserver sent to the proxy.
			if d := delta(before, w.stats(), dnsCounters...); d["dns_connected"] < 3+3 || d["captured"] != 0 {
				t.Errorf("counters %v: want the TCP retries connected to the proxy too", d)
			}
		})
	}

	// Every socket kind, one query each: exactly one capture counted, and
	// the reply's source and getpeername() are the nameserver.
	type sockCase struct {
		name   string
		p      *dnsPod
		server netip.AddrPort
		family string
		extra  []string
		stat   string
	}
	var cases []sockCase
	for _, k := range []struct {
		kind  string
		extra []string
		stat  string
	}{{"unconnected UDP", nil, "dns_captured"}, {"connected UDP", []string{"-connect"}, "dns_connected"}, {"TCP", []string{"-tcp"}, "dns_connected"}} {
		cases = append(cases,
			sockCase{"AF_INET " + k.kind, dual, w.nameserver4, "4", k.extra, k.stat},
			sockCase{"AF_INET6 v4-mapped " + k.kind, dual, w.nameserver4, "mapped", k.extra, k.stat},
			sockCase{"AF_INET6 " + k.kind, only6, w.nameserv6, "6", k.extra, k.stat})
	}
	for _, c := range cases {
		t.Run("socket/"+c.name, func(t *testing.T) {
			before := w.stats()
			r := c.p.query(t, c.server, "proxy-only.test", c.family, c.extra...)
			wantFrom := c.server.String()
			if c.family == "mapped" {
				wantFrom = mapped(wantFrom)
			}
			if r.Error != "" || !slices.Equal(r.Answers, []string{proxyOnly4.String()}) {
				t.Fatalf("query: %+v, want %s from the proxy", r, proxyOnly4)
			}
			if r.ReplyFrom != wantFrom {
				t.Errorf("reply came from %s, want the nameserver asked, %s", r.ReplyFrom, wantFrom)
			}
			if len(c.extra) > 0 && r.Getpeername != wantFrom {
				t.Errorf("getpeername() = %s, want %s", r.Getpeername, wantFrom)
			}
			d := delta(before, w.stats(), dnsCounters...)
			wantRestored := uint64(1)
			if c.stat == "dns_connected" && c.extra[0] == "-tcp" {
				wantRestored = 0 // TCP: getpeername, no datagram source
			}
			if d[c.stat] != 1 || d["dns_restored"] != wantRestored || d["captured"] != 0 {
				t.Errorf("counters %v: want %s +1, dns_restored +%d", d, c.stat, wantRestored)
			}
		})
	}

	t.Run("exclusions", func(t *testing.T) {
		before := w.stats()
		// UDP to another port of the nameserver is not DNS capture's.
		if got, out := dual.dig(t, netip.AddrPortFrom(clusterDNS4, 5353), "port-5353.test"); !slices.Equal(got, []string{"10.250.97.1"}) {
			t.Errorf("dig @%s -p 5353: %v, want the port-5353 server's answer\n%s", clusterDNS4, got, out)
		}
		// Port 53 of a server that is not a nameserver of the pod.
		for _, p := range []struct {
			p  *dnsPod
			to netip.Addr
		}{{dual, otherDNS4}, {only6, otherDNS6}} {
			if got, out := p.p.dig(t, netip.AddrPortFrom(p.to, 53), "other-server.test"); !slices.Equal(got, []string{"10.250.98.1"}) {
				t.Errorf("dig @%s: %v, want that server's own answer\n%s", p.to, got, out)
			}
		}
		// The proxy's own queries (uid 1337, its container) go where
		// they are sent: the cluster DNS does not know proxy-only.test.
		for _, p := range []*dnsPod{dual, only6} {
			spec := testutil.ProcSpec{Netns: p.ns, Cgroup: p.pod.proxy, UID: testutil.Int(proxyUID), GID: testutil.Int(proxyUID)}
			got, out := dig(t, spec, netip.AddrPortFrom(p.nameserver, 53), "proxy-only.test")
			if len(got) != 0 || !strings.Contains(out, "status: NXDOMAIN") {
				t.Errorf("the proxy's own query was answered %v, want the cluster DNS's NXDOMAIN\n%s", got, out)
			}
			// And from an unconnected socket (sendmsg), as dnsmasq asks.
			fam := "4"
			if p.nameserver.Is6() {
				fam = "6"
			}
			var r dnsQueryResult
			runIn(t, spec, &r, "dnsquery", "-server", netip.AddrPortFrom(p.nameserver, 53).String(), "-name", "proxy-only.test", "-family", fam)
			if r.RCode != "RCodeNameError" || len(r.Answers) != 0 {
				t.Errorf("the proxy's own unconnected query: %+v, want the cluster DNS's NXDOMAIN", r)
			}
		}
		if d := delta(before, w.stats(), dnsCounters...); d["dns_captured"]+d["dns_connected"] != 0 {
			t.Errorf("counters %v: nothing here may be captured", d)
		}
	})

	t.Run("capture off", func(t *testing.T) {
		w.setDNS(dual, policy.DNS{})
		defer w.setDNS(dual, policy.DNS{Capture: true, Nameservers: []netip.Addr{clusterDNS4}})
		before := w.stats()
		if got, out := dual.dig(t, w.nameserver4, "proxy-only.test"); len(got) != 0 || !strings.Contains(out, "status: NXDOMAIN") {
			t.Errorf("capture off: proxy-only.test answered %v, want the nameserver's NXDOMAIN\n%s", got, out)
		}
		if got := dual.getent(t, "cluster-only.test"); !slices.Equal(got, []string{clusterOnly4.String()}) {
			t.Errorf("capture off: getent cluster-only.test = %v", got)
		}
		if d := delta(before, w.stats(), dnsCounters...); d["dns_captured"]+d["dns_connected"]+d["dns_restored"] != 0 {
			t.Errorf("capture off: counters %v", d)
		}
	})

	t.Run("excluded outbound port 53", func(t *testing.T) {
		w.setDNSPolicy(dual, policy.Outbound{AllIPs: true, ExcludePorts: []uint16{53}})
		defer w.setDNS(dual, policy.DNS{Capture: true, Nameservers: []netip.Addr{clusterDNS4}})
		if got, out := dual.dig(t, w.nameserver4, "proxy-only.test"); len(got) != 0 {
			t.Errorf("port 53 excluded: proxy-only.test answered %v, want the nameserver's NXDOMAIN\n%s", got, out)
		}
	})

	t.Run("capture all port-53 destinations", func(t *testing.T) {
		w.setDNS(dual, policy.DNS{Capture: true, All: true})
		defer w.setDNS(dual, policy.DNS{Capture: true, Nameservers: []netip.Addr{clusterDNS4}})
		got, out := dual.dig(t, netip.AddrPortFrom(otherDNS4, 53), "proxy-only.test")
		if !slices.Equal(got, []string{proxyOnly4.String()}) {
			t.Errorf("capture all: dig @%s proxy-only.test = %v, want the proxy's answer\n%s", otherDNS4, got, out)
		}
	})

	for name, wt := range watches {
		if n := wt.Stop(); n != 0 {
			t.Errorf("%s: %d conntrack entries created, want 0", name, n)
		}
	}
	// Control: with conntrack on in the namespace (a nat rule that
	// matches nothing here), the same watch sees the DNS flows.
	dual.ns.Exec(t, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "REDIRECT", "--to-ports", "10")
	wt := testutil.WatchConntrackProto(t, dual.ns, "ipv4", "udp")
	got, out := dual.dig(t, w.nameserver4, "proxy-only.test")
	if n := wt.Stop(); len(got) != 1 || n < 1 {
		t.Errorf("control with conntrack on: answers %v, %d NEW UDP events; want >= 1\n%s", got, n, out)
	}
}

// setDNSPolicy gives the pod another outbound policy, DNS capture on.
func (w *dnsWorld) setDNSPolicy(p *dnsPod, out policy.Outbound) {
	w.t.Helper()
	if err := w.dp.UpsertPod(datapath.Pod{Name: p.name, CgroupID: p.id, IPv4: p.v4, IPv6: p.v6, Capture: true,
		Outbound: out, Inbound: inboundAll, DNS: policy.DNS{Capture: true, Nameservers: []netip.Addr{p.nameserver}}}); err != nil {
		w.t.Fatalf("upsert pod %s: %v", p.name, err)
	}
}

// The agent binary captures DNS for a pod its pod file says captures it,
// with every DNS program loaded; on a kernel reported without a DNS hook it
// says "dns: off because ..." in its plan, warns about the pod that asks,
// loads none of the DNS programs and leaves the pod's DNS alone, whole:
// no half capture whose replies would come back from the wrong source.
func TestAgentDNSPlan(t *testing.T) {
	w := newBareDNSWorld(t)
	p := w.addDNSPod("a", podAIP, netip.Addr{}, clusterDNS4, policy.DNS{})
	podFile := filepath.Join(w.dir, "pods.json")
	writeJSON(t, podFile, map[string]any{"pods": []map[string]any{{
		"name": "test/a", "cgroup": p.cgroup, "ip": podAIP.String(),
		"dns_capture": true, "nameservers": []string{clusterDNS4.String()},
	}}})
	args := func(extra ...string) []string {
		return append([]string{bin.sockbridge, "agent", "--cgroup", w.cgroup, "--bpffs-dir", w.pinDir, "--pods-file", podFile}, extra...)
	}
	dnsProgs := []string{"sendmsg4_redirect", "sendmsg6_redirect", "recvmsg4_restore", "recvmsg6_restore"}

	t.Run("dns on", func(t *testing.T) {
		agent := testutil.Start(t, testutil.ProcSpec{Args: args()})
		if !agent.WaitOutput("pods synced", 10*time.Second) {
			t.Fatalf("agent did not start:\n%s", agent.Output())
		}
		if !strings.Contains(agent.Output(), "plan: dns: on") {
			t.Errorf("agent log does not say dns: on:\n%s", agent.Output())
		}
		progs := processPrograms(t, agent.Cmd.Process.Pid)
		for _, name := range dnsProgs {
			if !slices.Contains(progs, name) {
				t.Errorf("the agent loaded %v, want %s among them", progs, name)
			}
		}
		if got := p.getent(t, "proxy-only.test"); !slices.Equal(got, []string{proxyOnly4.String()}) {
			t.Errorf("getent proxy-only.test = %v, want the DNS proxy's answer", got)
		}
		stopAgent(t, agent)
	})

	t.Run("dns hooks reported missing", func(t *testing.T) {
		agent := testutil.Start(t, testutil.ProcSpec{Args: args("--disable-feature", "cgroup/recvmsg4")})
		if !agent.WaitOutput("pods synced", 10*time.Second) {
			t.Fatalf("agent did not start:\n%s", agent.Output())
		}
		out := agent.Output()
		if !strings.Contains(out, "dns: off because cgroup/recvmsg4 attach type turned off on request") ||
			!strings.Contains(out, "the pod asks for DNS capture but this node's datapath has it off") {
			t.Errorf("agent log does not give the plan and the pod's warning:\n%s", out)
		}
		progs := processPrograms(t, agent.Cmd.Process.Pid)
		for _, name := range dnsProgs {
			if slices.Contains(progs, name) {
				t.Errorf("the agent without DNS loaded %s (%v)", name, progs)
			}
		}
		for _, hook := range []string{"sendmsg4", "recvmsg4"} {
			if _, err := os.Stat(filepath.Join(w.pinDir, "links", hook)); !os.IsNotExist(err) {
				t.Errorf("link %s still pinned without DNS (stat: %v)", hook, err)
			}
		}
		// glibc's connected socket and dig's: straight to the nameserver.
		if got := p.getent(t, "cluster-only.test"); !slices.Equal(got, []string{clusterOnly4.String()}) {
			t.Errorf("getent cluster-only.test = %v, want the cluster DNS's answer", got)
		}
		if got, out := p.dig(t, w.nameserver4, "proxy-only.test"); len(got) != 0 || !strings.Contains(out, "status: NXDOMAIN") {
			t.Errorf("DNS off: proxy-only.test answered %v, want the nameserver's NXDOMAIN\n%s", got, out)
		}
		if qs := p.proxy.QueriesFor("cluster-only.test"); len(qs) != 0 {
			t.Errorf("the DNS proxy was asked %+v with DNS capture off", qs)
		}
		stopAgent(t, agent)
	})
}
