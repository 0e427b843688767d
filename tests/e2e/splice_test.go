package e2e

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

func withSplice(on bool) func(*datapath.Config) {
	return func(c *datapath.Config) { c.Splice = on }
}

// With splicing on, pod A's app reaches pod B's app on the same node
// through both sidecars (HAProxy, which reads and writes, no splice(2)),
// every payload size arrives intact, and the bytes between the two
// sidecars really were redirected by sk_msg. (Only that leg is spliced:
// bpf/sockops.c says why application sockets never are.)
func TestSpliceCorrectness(t *testing.T) {
	e := newEnvWith(t, withSplice(true))
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})
	b := e.addPod("b", podBIP, podOpts{inMap: true, capture: true, sidecar: true})
	echo := testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.app, Args: []string{bin.sbpeer, "serve", "-listen", "0.0.0.0:9090"}})
	// A second server that resets each connection after 64 KiB.
	resetting := testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.app, Args: []string{bin.sbpeer, "serve", "-listen", "0.0.0.0:9091", "-reset-after", "65536"}})
	testutil.WaitListening(t, b.ns, 9090)
	testutil.WaitListening(t, b.ns, 9091)
	target := netip.AddrPortFrom(podBIP, 9090).String()

	for _, size := range []int{1, 100, 4096, 65536, 1 << 20, 4 << 20} {
		t.Run(fmt.Sprintf("payload %d B", size), func(t *testing.T) {
			var r peer.Roundtrip
			a.run(t, &r, "stream", "-addr", target, "-bytes", strconv.Itoa(size))
			if !r.Intact || r.Getpeername != target {
				t.Errorf("%+v", r)
			}
		})
	}
	t.Run("writes larger than the socket buffer", func(t *testing.T) {
		var r peer.Roundtrip
		a.run(t, &r, "stream", "-addr", target, "-bytes", strconv.Itoa(16<<20), "-chunk", strconv.Itoa(8<<20))
		if !r.Intact {
			t.Errorf("%+v", r)
		}
	})
	t.Run("many concurrent connections", func(t *testing.T) {
		var r peer.Conns
		a.run(t, &r, "conns", "-addr", target, "-n", "3000", "-parallel", "64")
		if r.OK != 3000 {
			t.Errorf("%+v", r)
		}
	})
	t.Run("half-close", func(t *testing.T) {
		// stream half-closes after sending and reads the echo to EOF.
		var r peer.Roundtrip
		a.run(t, &r, "stream", "-addr", target, "-bytes", "300000", "-pause", "100ms")
		if !r.Intact {
			t.Errorf("%+v", r)
		}
	})
	t.Run("reset by the server", func(t *testing.T) {
		var r peer.Reset
		a.run(t, &r, "reset", "-addr", netip.AddrPortFrom(podBIP, 9091).String())
		if strings.HasPrefix(r.Error, "timeout") || r.Error == "" {
			t.Errorf("the client did not see the reset: %+v", r)
		}
	})
	t.Run("reset by the client", func(t *testing.T) {
		var r peer.Reset
		a.run(t, &r, "reset", "-addr", target, "-abort", "-bytes", "1000000")
		if r.Error != "aborted" {
			t.Errorf("%+v", r)
		}
		// The sidecar survives and serves the next connection.
		var rt peer.Roundtrip
		a.run(t, &rt, "stream", "-addr", target, "-bytes", "65536")
		if !rt.Intact {
			t.Errorf("after a client reset: %+v", rt)
		}
	})

	s := e.stats()
	t.Logf("counters: %v", s)
	if s.Get("splice_redirected") == 0 || s.Get("splice_added") == 0 {
		t.Errorf("nothing was spliced: %v", s)
	}
	if s.Get("splice_add_failed") != 0 {
		t.Errorf("splice_add_failed = %d", s.Get("splice_add_failed"))
	}

	t.Run("sidecar killed mid-stream", func(t *testing.T) {
		spec := testutil.ProcSpec{Netns: a.ns, Cgroup: a.app, Args: []string{bin.sbpeer, "reset", "-addr", target}}
		streaming := testutil.Start(t, spec)
		time.Sleep(500 * time.Millisecond)
		a.sidecar.Stop()
		if !streaming.WaitOutput(`"error"`, 10*time.Second) {
			t.Fatalf("client still streaming 10 s after the sidecar died: %s", streaming.Output())
		}
		var r peer.Reset
		json.Unmarshal([]byte(streaming.Output()), &r)
		if strings.HasPrefix(r.Error, "timeout") {
			t.Errorf("client hung until its timeout: %+v", r)
		}
	})

	// Pod a's sidecar died with spliced bytes unread, which the kernel
	// answers with FIN, not RST (docs/splice.md, hazard 6): pod b's
	// HAProxy may hold that connection, half-closed and then reset, until
	// its 120 s timeouts, its server side stuck behind the echo server's
	// full buffers (11 of 77 runs here). The socket is open, so it is still
	// in the sockhash. Ending b's servers ends those connections; then b's
	// running sidecar must have closed, and the datapath released, all.
	echo.Stop()
	resetting.Stop()
	waitNoFlows(t, e)
}

// waitNoFlows waits until no socket carries sockbridge state and nothing is
// left in the sockhash.
func waitNoFlows(t *testing.T, e *env) {
	t.Helper()
	var live, spliced int
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if live, err = e.dp.LiveSockets(); err != nil {
			t.Fatal(err)
		}
		if spliced, err = e.dp.SplicedSockets(); err != nil {
			t.Fatal(err)
		}
		if live == 0 && spliced == 0 {
			return
		}
	}
	flows, _ := e.dp.Flows()
	t.Errorf("after every connection closed: %d sockets with state, %d in the sockhash: %+v", live, spliced, flows)
	logSpliced(t, e)
}

// logSpliced logs every sb_sockhash entry with the socket's line from
// `ss -tanie` in the host and every named network namespace, found by its
// cookie (ss prints it as sk:<hex>).
func logSpliced(t *testing.T, e *env) {
	t.Helper()
	list, err := e.dp.SplicedSocketList()
	if err != nil {
		t.Logf("list sockhash: %v", err)
	}
	out, _ := exec.Command("ss", "-tanie").CombinedOutput()
	nsOut, _ := exec.Command("ip", "-all", "netns", "exec", "ss", "-tanie").CombinedOutput()
	lines := strings.Split(string(out)+string(nsOut), "\n")
	for _, h := range heldClosedSockets(e) {
		t.Logf("held open, not in sock_diag: %s", h)
	}
	for _, s := range list {
		t.Logf("in the sockhash: netns %d %s -> %s cookie %d", s.Netns, s.Local, s.Remote, s.Cookie)
		for i, l := range lines {
			if strings.Contains(l, fmt.Sprintf("sk:%x ", s.Cookie)) || strings.HasSuffix(l, fmt.Sprintf("sk:%x", s.Cookie)) {
				prev := ""
				if i > 0 {
					prev = lines[i-1]
				}
				t.Logf("  ss: %s %s", strings.TrimSpace(prev), strings.TrimSpace(l))
			}
		}
	}
}

// heldClosedSockets lists the TCP sockets that processes in the test's
// cgroups hold open but sock_diag no longer lists in any namespace: closed
// by their peer (a reset) and not yet closed by their owner. Such a socket
// stays in sb_sockhash until its owner closes it.
func heldClosedSockets(e *env) []string {
	seen := map[string]bool{}
	all, _ := exec.Command("ss", "-anie", "-A", "all").CombinedOutput()
	nsAll, _ := exec.Command("ip", "-all", "netns", "exec", "ss", "-anie", "-A", "all").CombinedOutput()
	for _, m := range regexp.MustCompile(`ino:(\d+)`).FindAllStringSubmatch(string(all)+string(nsAll), -1) {
		seen[m[1]] = true
	}
	var held []string
	filepath.WalkDir(e.cgroup, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		procs, _ := os.ReadFile(p)
		for _, pid := range strings.Fields(string(procs)) {
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			fds, _ := os.ReadDir("/proc/" + pid + "/fd")
			for _, fd := range fds {
				link, _ := os.Readlink("/proc/" + pid + "/fd/" + fd.Name())
				ino, ok := strings.CutPrefix(link, "socket:[")
				if ino = strings.TrimSuffix(ino, "]"); ok && !seen[ino] {
					held = append(held, fmt.Sprintf("pid %s (%s) fd %s inode %s", pid, strings.TrimSpace(string(comm)), fd.Name(), ino))
				}
			}
		}
		return nil
	})
	return held
}

// Two pods open connections with identical loopback 4-tuples
// (127.0.0.1:40000 -> 127.0.0.1:15001, each in its own netns) at the same
// time, to different servers, with the splicing programs loaded: each gets
// its own bytes and its own original destination (the handshake keys
// carry the netns cookie; the app sockets themselves are not spliced).
func TestSpliceNoCrossPodCollision(t *testing.T) {
	e := newEnvWith(t, withSplice(true))
	// No pod IP in the map: the source stays what the app bound.
	a := e.addPod("a", podAIP, podOpts{sidecar: true})
	b := e.addPod("b", podBIP, podOpts{sidecar: true})
	for _, p := range []*pod{a, b} {
		if err := e.dp.UpsertPod(datapath.Pod{CgroupID: p.id, Capture: true, Outbound: outboundAll, Inbound: inboundAll}); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Start(t, testutil.ProcSpec{Netns: e.server, Args: []string{bin.sbpeer, "serve", "-listen", "0.0.0.0:8081"}})
	testutil.WaitListening(t, e.server, 8081)

	sameTupleStreams(t, map[*pod]string{a: serverAddr(), b: netip.AddrPortFrom(serverIP, 8081).String()}, "127.0.0.1:40000")
	if s := e.stats(); s.Get("splice_added") != 0 {
		t.Errorf("application sockets entered the sockhash: %v", s)
	}
	waitNoFlows(t, e)
}

// sameTupleStreams streams 8 MiB from each pod to its target at the same
// moment, every client bound to the same address and port, and checks that
// each pod's bytes arrive intact at its own original destination.
func sameTupleStreams(t *testing.T, targets map[*pod]string, bind string, extra ...string) {
	t.Helper()
	results := map[*pod]*peer.Roundtrip{}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	for p, target := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r peer.Roundtrip
			args := append([]string{"stream", "-addr", target, "-bind", bind, "-pause", "1s", "-bytes", strconv.Itoa(8 << 20)}, extra...)
			p.run(t, &r, args...)
			mu.Lock()
			results[p] = &r
			mu.Unlock()
		}()
	}
	wg.Wait()
	for p, target := range targets {
		r := results[p]
		if r == nil {
			t.Fatalf("pod %s: no result", p.name)
		}
		if r.Getsockname != bind {
			t.Errorf("pod %s: source %s, want %s (identical tuples in both pods)", p.name, r.Getsockname, bind)
		}
		if !r.Intact {
			t.Errorf("pod %s: 8 MiB not intact: %+v", p.name, r)
		}
		if r.ServerLocal != target || r.Getpeername != target {
			t.Errorf("pod %s: reached %s (getpeername %s), want %s", p.name, r.ServerLocal, r.Getpeername, target)
		}
	}
}

// A sidecar that copies with splice(2) (Go's io.Copy between TCP conns)
// works with splicing off. With splicing on, the bytes sk_msg redirects
// into its upstream socket (to pod B's sidecar on the same node, the
// spliced leg) are invisible to splice(2): the test records what happens.
func TestSpliceHazardGoProxy(t *testing.T) {
	for _, splice := range []bool{false, true} {
		t.Run(fmt.Sprintf("splice=%v", splice), func(t *testing.T) {
			e := newEnvWith(t, withSplice(splice))
			a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true})
			b := e.addPod("b", podBIP, podOpts{inMap: true, capture: true, sidecar: true})
			testutil.Start(t, testutil.ProcSpec{Netns: b.ns, Cgroup: b.app, Args: []string{bin.sbpeer, "serve", "-listen", "0.0.0.0:9090"}})
			testutil.WaitListening(t, b.ns, 9090)
			proxy := testutil.Start(t, testutil.ProcSpec{Netns: a.ns, Cgroup: a.proxy, UID: testutil.Int(proxyUID), GID: testutil.Int(proxyUID),
				Args: []string{bin.sbpeer, "gosidecar", "-listen", "127.0.0.1:15001"}})
			testutil.WaitListening(t, a.ns, 15001)
			target := netip.AddrPortFrom(podBIP, 9090).String()
			spec := testutil.ProcSpec{Netns: a.ns, Cgroup: a.app, Args: []string{bin.sbpeer, "stream", "-addr", target, "-bytes", "262144", "-timeout", "5s"}}
			out, err := testutil.Output(t, 30*time.Second, spec)
			var r peer.Roundtrip
			if err == nil {
				json.Unmarshal(out, &r)
			}
			if !splice {
				if err != nil || !r.Intact {
					t.Fatalf("Go io.Copy proxy with splicing off: %v %+v\n%s", err, r, proxy.Output())
				}
				return
			}
			// Seen on 6.18: the transfer ends early with data missing
			// (intact=false); elsewhere it stalls until the timeout.
			t.Logf("Go io.Copy proxy with splicing on: err=%v intact=%v (splice(2) does not see sk_msg data: expect a stall or a truncated stream)", err, r.Intact)
			if err == nil && r.Intact {
				t.Logf("note: this kernel delivered spliced data to splice(2); the hazard may be fixed here")
			}
		})
	}
}
