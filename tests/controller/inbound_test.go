package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
	"github.com/sockbridge/sockbridge/pkg/inbound"
	"github.com/sockbridge/sockbridge/pkg/policy"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

const (
	annIncludeInbound = "traffic.sidecar.istio.io/includeInboundPorts"
	annExcludeInbound = "traffic.sidecar.istio.io/excludeInboundPorts"
)

// Inbound capture follows the pod's annotations through the real API
// server and the real datapath: every port by default, only the included
// ones after includeInboundPorts, all but the excluded ones after
// excludeInboundPorts, and nothing (no link left) once the pod is deleted.
// A remote client's connection goes through the pod's sidecar exactly when
// its port is captured.
func TestInboundFollowsAPI(t *testing.T) {
	k := newKube(t)
	testutil.RequirePrivileged(t, "haproxy", "ss", "sysctl")
	w := &world{t: t, k: k}
	w.cfg = datapath.IstioDefaults()
	w.cfg.ForPreset(k.preset)
	w.cfg.CgroupPath = k.cgroupRoot
	w.cfg.PinDir = testutil.PinDir(t)
	w.cfg.Inbound = true
	t.Cleanup(func() {
		if err := datapath.Uninstall(w.cfg.PinDir); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	w.load()
	w.network()

	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	r := inbound.New(w.dp, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	k.startAgent(inbound.Tracking{PodMap: w.dp, R: r})

	ip := netip.MustParseAddr("10.250.0.2")
	p := w.addPod("web", "cgroupfs", ip, nil)
	for _, port := range []int{9090, 9091} {
		testutil.Start(t, testutil.ProcSpec{Netns: p.ns, Cgroup: p.app, Args: []string{bin.sbpeer, "serve", "-listen", fmt.Sprintf("0.0.0.0:%d", port)}})
		testutil.WaitListening(t, p.ns, port)
	}
	client := w.net.AddHost("client", netip.MustParseAddr("10.250.0.20"))
	// throughSidecar dials the pod's port from the remote client and says
	// whether the connection reached the app through the sidecar.
	throughSidecar := func(port uint16) bool {
		t.Helper()
		addr := netip.AddrPortFrom(ip, port).String()
		out, err := testutil.Output(t, time.Minute, testutil.ProcSpec{Netns: client, Args: []string{bin.sbpeer, "roundtrip", "-addr", addr, "-bytes", "4096"}})
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		var res peer.Roundtrip
		if err := json.Unmarshal(out, &res); err != nil || !res.Intact {
			t.Fatalf("dial %s: %s (%v)", addr, out, err)
		}
		return strings.HasPrefix(res.ServerSawPeer, "127.0.0.6:")
	}
	waitInbound := func(what string, want map[uint16]bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := map[uint16]bool{}
			for port := range want {
				got[port] = throughSidecar(port)
			}
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: through the sidecar by port %v, want %v", what, got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	waitInbound("every port by default", map[uint16]bool{9090: true, 9091: true})
	k.annotate("web", map[string]string{annIncludeInbound: "9090"})
	waitInbound("includeInboundPorts 9090", map[uint16]bool{9090: true, 9091: false})
	k.annotate("web", map[string]string{annIncludeInbound: "*", annExcludeInbound: "9090"})
	waitInbound("excludeInboundPorts 9090", map[uint16]bool{9090: false, 9091: true})
	if n := len(w.dp.InboundAttached()); n != 1 {
		t.Errorf("%d pods with inbound capture, want 1", n)
	}

	k.deletePod("web")
	waitState(t, w.dp, 10*time.Second, "web deleted", func(m map[uint64]policy.Pod) bool { _, ok := m[p.id]; return !ok })
	for deadline := time.Now().Add(5 * time.Second); len(w.dp.InboundAttached()) != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("inbound capture still attached after the pod was deleted: %v", w.dp.InboundAttached())
		}
	}
}
