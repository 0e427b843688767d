package controller_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
)

// TestRestartUnderLoad of tests/e2e with the Kubernetes pod source: the
// agent binary watches the real API server as deploy/'s ServiceAccount and
// is SIGKILLed and restarted three times while the app of a pod the API
// server knows makes 1500 sequential connections through HAProxy. Every
// start lists the pods and reconciles the pod map while connections go
// on; every connection succeeds through the sidecar.
func TestRestartUnderLoadKubernetes(t *testing.T) {
	const conns = 1500
	k := newKube(t)
	w := newWorld(t, k)
	w.network()
	p := w.addPod("a", "cgroupfs", netip.MustParseAddr("10.250.0.2"), nil)
	w.dp.Close() // the agent process takes over the pinned datapath
	kubeconfig := k.api.Kubeconfig(t, t.TempDir(), agentUser)
	start := func() *testutil.Agent {
		return testutil.StartAgent(t, bin.sockbridge, "--node-name", nodeName, "--kubeconfig", kubeconfig,
			"--cgroup", k.cgroupRoot, "--bpffs-dir", w.cfg.PinDir)
	}
	agent := start()
	agent.WaitReady(t)
	if !p.dial(t, server1.String()+":8080") {
		t.Fatalf("pod a not captured by the agent:\n%s", agent.Output())
	}

	client := testutil.Start(t, testutil.ProcSpec{Netns: p.ns, Cgroup: p.app, Args: []string{
		bin.sbpeer, "conns", "-addr", server1.String() + ":8080", "-n", fmt.Sprint(conns), "-parallel", "1", "-pause", "5ms"}})
	before := len(p.sidecar.LogLines("outbound"))
	_, outputs := testutil.RestartsUnderLoad(t, agent, start, client, p.sidecar, before+conns/4, before+conns/2, before+3*conns/4)
	client.Wait()
	var r struct {
		OK     int64    `json:"ok"`
		Failed int64    `json:"failed"`
		Errors []string `json:"errors"`
	}
	if err := json.Unmarshal([]byte(client.Output()), &r); err != nil {
		t.Fatalf("client output %q: %v", client.Output(), err)
	}
	lines := p.sidecar.WaitLogLines("outbound", before+conns)[before:]
	wrong := 0
	for _, l := range lines {
		if !strings.Contains(l, "orig_dst="+server1.String()+":8080") {
			wrong++
		}
	}
	if r.OK != conns || r.Failed != 0 || len(lines) != conns || wrong != 0 {
		t.Errorf("after 3 SIGKILL restarts: %d of %d connections succeeded (%v), the sidecar forwarded %d, %d to another destination",
			r.OK, conns, r.Errors, len(lines), wrong)
		for i, out := range outputs {
			t.Logf("agent %d:\n%s", i+1, out)
		}
	}
}
