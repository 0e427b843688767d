package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// Splicing applies only between two sidecars on one node (docs/splice.md:
// no socket an application owns is spliced), so variant 5's own workloads,
// which reach an unmeshed server, splice nothing. The mesh workloads below
// measure the path splicing is for: variants 4 and 5 each get a second
// meshed pod, the "mesh server", in the same datapath. Its app (the echo
// server) sits behind its own HAProxy sidecar, reached through the
// same-node shortcut to its inbound port 15006 as the e2e splice tests do:
//
//	client app -> client sidecar :15001 -> (shortcut) server sidecar :15006
//	  -> from 127.0.0.6 -> server app
//
// The sidecar-to-sidecar leg is the one sockops adds to the sockhash and
// sk_msg redirects when splicing is on (variant 5); with it off (variant 4)
// the same path runs over TCP. The two are interleaved over the same
// rounds.

// passthroughSource is where the server sidecar's inbound connections to
// its app come from (Envoy's inbound passthrough, the test sidecar's too).
var passthroughSource = netip.MustParseAddr("127.0.0.6")

// meshServer is the meshed server pod of a sockbridge variant.
type meshServer struct {
	pod  *pod
	addr string // the echo server, as the client dials it
}

// meshServerIP is the address of the mesh server that goes with the client
// pod at ip: 30 above it in the bench subnet.
func meshServerIP(client netip.Addr) netip.Addr {
	b := client.As4()
	b[3] += 30
	return netip.AddrFrom4(b)
}

// addMeshServer builds the meshed server pod of variant v next to its
// client pod (parent is the cgroup v's datapath is attached to) and starts
// its echo server.
func (w *world) addMeshServer(v *variant, parent string, ip netip.Addr) *meshServer {
	w.t.Helper()
	p := w.addPod(hostNames[v.id]+"-srv", parent, ip)
	if err := v.dp.UpsertPod(meshedPod(p.id, ip)); err != nil {
		w.t.Fatalf("put mesh server pod of variant %d in the map: %v", v.id, err)
	}
	testutil.Start(w.t, testutil.ProcSpec{
		Netns: p.ns, Cgroup: p.app,
		Args: []string{w.sbpeer, "serve", "-listen", fmt.Sprintf("0.0.0.0:%d", echoPort)},
	})
	testutil.WaitListening(w.t, p.ns, echoPort)
	return &meshServer{pod: p, addr: netip.AddrPortFrom(ip, echoPort).String()}
}

// meshSizes are the request sizes of the mesh workloads, by label.
var meshSizes = []struct {
	label string
	size  int
}{{"mesh64", 64}, {"mesh16k", 16 << 10}}

// meshReqResp runs a request/response workload from the variant's client
// app to its mesh server and measures, besides latency and rate, the BPF
// run time of the datapath per request and of the sk_msg program per
// message. It checks that the requests took the sidecar-to-sidecar path
// (the server sidecar logged them inbound, the server app saw the
// passthrough source) and that they were spliced exactly when the variant
// splices.
func (b *bench) meshReqResp(label string, size int) func(v *variant) (map[string]float64, int, error) {
	return func(v *variant) (map[string]float64, int, error) {
		inbound := countLines(v.mesh.pod.sidecar.Proc, "inbound")
		redirected, err := spliceRedirected(v)
		if err != nil {
			return nil, 0, err
		}
		start := b.progSnapshot(v)
		var r peer.ReqResp
		err = b.sbpeer(v, &r, b.s.Duration+time.Minute, "reqresp", "-addr", v.mesh.addr,
			"-size", strconv.Itoa(size), "-n", strconv.Itoa(b.s.ReqMax), "-duration", b.s.Duration.String())
		if err := reqRespOK(r, err); err != nil {
			return nil, 0, err
		}
		progs := b.progDelta(v, start)
		if ap, err := netip.ParseAddrPort(r.ServerSaw); err != nil || ap.Addr() != passthroughSource {
			return nil, 0, fmt.Errorf("the mesh server saw source %q, want the inbound passthrough %s: the server sidecar was skipped", r.ServerSaw, passthroughSource)
		}
		if n := waitLines(v.mesh.pod.sidecar.Proc, "inbound", inbound+1) - inbound; n < 1 {
			return nil, 0, errors.New("the mesh server's sidecar logged no inbound connection")
		}
		after, err := spliceRedirected(v)
		if err != nil {
			return nil, 0, err
		}
		switch spliced := after - redirected; {
		case v.id == splice && spliced == 0:
			return nil, 0, errors.New("splicing on, but sk_msg redirected no message (splice_redirected did not grow)")
		case v.id != splice && spliced != 0:
			return nil, 0, fmt.Errorf("splicing off, but %d messages were redirected", spliced)
		}
		vals := map[string]float64{label + "_p50_us": r.P50Us, label + "_p99_us": r.P99Us, label + "_rps": r.PerSec}
		if progs != nil {
			var total time.Duration
			for name, st := range progs {
				total += st.runtime
				b.res.Cost = append(b.res.Cost, progCost{Round: b.curRound, Variant: v.id, Workload: label,
					Program: name, Calls: st.runs, RuntimeNs: uint64(st.runtime.Nanoseconds()), Units: uint64(r.Requests)})
			}
			vals[label+"_bpf_ns_per_req"] = float64(total.Nanoseconds()) / float64(r.Requests)
			if v.id == splice {
				msg, ok := skMsgStat(b.progs[v.id], progs)
				if !ok || msg.runs == 0 {
					return nil, 0, errors.New("splicing on, but the sk_msg program did not run")
				}
				vals[label+"_skmsg_ns_per_msg"] = float64(msg.runtime.Nanoseconds()) / float64(msg.runs)
				vals[label+"_skmsg_msgs_per_req"] = float64(msg.runs) / float64(r.Requests)
			}
		}
		return vals, 1, nil
	}
}

// waitLines waits up to logGrace for p to have logged n lines with prefix
// and returns how many it has.
func waitLines(p *testutil.Proc, prefix string, n int) int {
	got := countLines(p, prefix)
	for deadline := time.Now().Add(logGrace); got < n && time.Now().Before(deadline); got = countLines(p, prefix) {
		time.Sleep(20 * time.Millisecond)
	}
	return got
}

func spliceRedirected(v *variant) (uint64, error) {
	s, err := v.dp.Stats()
	if err != nil {
		return 0, fmt.Errorf("read datapath counters: %w", err)
	}
	return s.Get("splice_redirected"), nil
}

// skMsgStat sums the growth of the variant's sk_msg programs (one:
// skmsg_splice).
func skMsgStat(progs map[string]*ebpf.Program, delta map[string]progStat) (progStat, bool) {
	var sum progStat
	found := false
	for name, p := range progs {
		if p.Type() != ebpf.SkMsg {
			continue
		}
		found = true
		sum.runtime += delta[name].runtime
		sum.runs += delta[name].runs
	}
	return sum, found
}
