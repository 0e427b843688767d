package e2e

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// connsUnderTest is 100,000 unless SOCKBRIDGE_TEST_CONNS says otherwise.
func connsUnderTest(t *testing.T) int {
	if v := os.Getenv("SOCKBRIDGE_TEST_CONNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("SOCKBRIDGE_TEST_CONNS=%q: want a positive number", v)
		}
		return n
	}
	return 100000
}

// After many captured connections have closed, no per-connection state is
// left in the maps, and capture created no conntrack entry.
func TestBoundedStateNoConntrack(t *testing.T) {
	e := newEnv(t)
	a := e.addPod("a", podAIP, podOpts{inMap: true, capture: true, sidecar: true})
	n := connsUnderTest(t)

	watch := testutil.WatchConntrack(t, a.ns)
	var r peer.Conns
	start := time.Now()
	a.run(t, &r, "conns", "-addr", serverAddr(), "-n", strconv.Itoa(n), "-parallel", "8")
	created := watch.Stop()
	t.Logf("%d captured connections in %v (%.0f/s), %d conntrack NEW events", r.OK, time.Since(start).Round(time.Millisecond), r.PerSec, created)
	if r.OK != int64(n) || r.Failed != 0 {
		t.Fatalf("connections: %d ok, %d failed (first error %q), want %d ok", r.OK, r.Failed, r.FirstErr, n)
	}
	if created != 0 {
		t.Errorf("%d conntrack entries created in the pod netns, want 0", created)
	}
	s := e.stats()
	if s.Get("captured") != uint64(n) || s.Get("origdst_answered") != uint64(n) {
		t.Errorf("counters %v: want captured=%d origdst_answered=%d", s, n, n)
	}
	for _, c := range []string{"tuple_failed", "storage_failed", "bind_failed", "origdst_unknown"} {
		if s[c] != 0 {
			t.Errorf("counter %s = %d, want 0", c, s[c])
		}
	}

	// Sockets close asynchronously: wait for the last state callbacks.
	var inflight int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var err error
		if inflight, err = e.dp.InFlightTuples(); err != nil {
			t.Fatal(err)
		}
		if inflight == 0 {
			break
		}
	}
	if inflight != 0 {
		t.Errorf("%d entries left in sb_tuples after every connection closed", inflight)
	}
	if live, err := e.dp.LiveSockets(); err != nil {
		t.Errorf("count socket storage: %v", err)
	} else if live != 0 {
		t.Errorf("%d sockets still carry sockbridge storage after every connection closed", live)
	}

	// Control: the watcher does see entries once something in the netns
	// turns conntrack on (a REDIRECT rule matching none of this traffic).
	a.ns.Exec(t, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "1", "-j", "REDIRECT", "--to-ports", "1")
	watch = testutil.WatchConntrack(t, a.ns)
	a.run(t, &r, "conns", "-addr", serverAddr(), "-n", "50", "-parallel", "1")
	created = watch.Stop()
	if r.OK != 50 || created < 100 {
		t.Errorf("control with conntrack on: %d ok, %d NEW events; want 50 ok and >= 100 events (app->sidecar, sidecar->server)", r.OK, created)
	}
	t.Logf("control with conntrack on in the netns: %s NEW events per captured connection", fmt.Sprintf("%.2f", float64(created)/50))
}
