package testutil

import (
	"io"
	"net/http"
	"regexp"
	"syscall"
	"time"
)

// Agent is a running `sockbridge agent` serving /metrics, /healthz and
// /readyz on a loopback port.
type Agent struct {
	*Proc
	// Base is http://127.0.0.1:<port>.
	Base string
}

var servingRE = regexp.MustCompile(`serving /metrics.* addr="?([0-9.]+:[0-9]+)`)

// StartAgent starts `bin agent --metrics-addr 127.0.0.1:0 args...` and
// waits until it says where it serves.
func StartAgent(t TB, bin string, args ...string) *Agent {
	t.Helper()
	p := Start(t, ProcSpec{Args: append([]string{bin, "agent", "--metrics-addr", "127.0.0.1:0"}, args...)})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := servingRE.FindStringSubmatch(p.Output()); m != nil {
			return &Agent{Proc: p, Base: "http://" + m[1]}
		}
		if done, err := p.Exited(); done || time.Now().After(deadline) {
			t.Fatalf("agent never said where it serves (exited %v, %v):\n%s", done, err, p.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Get fetches url and returns the status code and body.
func Get(t TB, url string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// WaitReady polls /readyz until it answers 200, for at most 60 s.
func (a *Agent) WaitReady(t TB) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body := Get(t, a.Base+"/readyz")
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d after 60 s: %s\nagent:\n%s", code, body, a.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill SIGKILLs the agent's whole process group, as a container's end
// kills every process in it (a probe helper, if one is running), and waits
// for it.
func (a *Agent) Kill(t TB) {
	t.Helper()
	if err := syscall.Kill(-a.Cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill agent: %v", err)
	}
	a.Wait()
}

// RestartsUnderLoad kills the agent with SIGKILL each time the sidecar has
// logged at[i] outbound connections, starts a new one with start and waits
// for its /readyz, while client keeps making connections. It fails t if
// the client ends before the last new agent is ready: the restarts must
// overlap the traffic. It returns the last agent and every killed agent's
// output.
func RestartsUnderLoad(t TB, agent *Agent, start func() *Agent, client *Proc, sidecar *Sidecar, at ...int) (*Agent, []string) {
	t.Helper()
	var outputs []string
	for i, n := range at {
		if got := len(sidecar.WaitLogLinesFor("outbound", n, 60*time.Second)); got < n {
			t.Fatalf("sidecar saw %d connections, waiting for %d; client:\n%s", got, n, client.Output())
		}
		if done, _ := client.Exited(); done {
			t.Fatalf("the client finished before restart %d: the restarts did not overlap the traffic", i+1)
		}
		agent.Kill(t)
		outputs = append(outputs, agent.Output())
		agent = start()
		agent.WaitReady(t)
		if done, _ := client.Exited(); done {
			t.Fatalf("the client finished while agent %d started: the restart did not overlap the traffic", i+2)
		}
	}
	return agent, outputs
}
