package main

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/tests/sbpeer/peer"
)

// Where the time goes (issue 14): the BPF cost of a proxied connection
// split into the steps the datapath takes. Each step is a program of its
// own in bpf/steps.c doing exactly that step on the datapath's hook; all of
// them, and an empty program first and last on each hook (the floor: what
// running any program costs with run-time accounting on), are attached to
// a private cgroup in a private network namespace, whose own client and
// server make real loopback connections (connect, 1 B echo, close). A
// step's cost is its program's run time minus the floor's over the same
// calls, per execution of the step; how often the datapath executes it
// per proxied connection (stepDefs) turns that into ns per connection.

// stepsObject is bpf/steps.c compiled (gen.go).
//
//go:embed steps_bpfel.o
var stepsObject []byte

// Names in bpf/steps.c; TestStepsObjectNames checks them against the object.
const (
	stepProgC4Empty     = "step_c4_empty"
	stepProgC4EmptyLast = "step_c4_empty_last"
	stepProgStorage     = "step_c4_storage"
	stepProgBind        = "step_c4_bind"
	stepProgGen         = "step_c4_gen"
	stepProgCgHit       = "step_c4_cg_hit"
	stepProgCgMiss      = "step_c4_cg_miss"
	stepProgOpsEmpty    = "step_ops_empty"
	stepProgOpsLast     = "step_ops_empty_last"
	stepProgOpsCount    = "step_ops_count"
	stepProgPStore      = "step_ops_pstore"
	stepProgTuple       = "step_ops_tuple"
	stepProgSockhash    = "step_ops_shash"
	stepProgMsgPass     = "step_msg_pass"

	stepMapSocks      = "step_socks"
	stepMapGeneration = "step_generation"
	stepMapCgCache    = "step_cg_cache"
	stepMapCgMiss     = "step_cg_miss"
	stepMapTuples     = "step_tuples"
	stepMapSockhash   = "step_sockhash"
	stepMapDone       = "step_done"
	stepMapFailed     = "step_failed"
	stepMapOps        = "step_ops"
	stepVarConfig     = "step_cfg"
)

// Slots of step_done and step_failed: enum step_id.
const (
	slotStorage = iota
	slotBind
	slotGeneration
	slotCgHit
	slotCgMiss
	slotPassiveStorage
	slotTuplePut
	slotTupleTake
	slotSockhash
	stepSlots
)

// step_ops: side * opSlots + op; opStateOther is a state callback for a
// move to any state but TCP_CLOSE.
const (
	opSlots      = 32
	opStateCB    = 10
	opStateOther = 31
)

// stepConfig is struct step_config.
type stepConfig struct {
	PodIP4     uint32 // network byte order
	ServerPort uint32 // host byte order
}

// The hooks the step programs share, and their floors.
const (
	hookConnect4 = "cgroup/connect4"
	hookSockops  = "sockops"
)

var hookFloors = map[string][2]string{
	hookConnect4: {stepProgC4Empty, stepProgC4EmptyLast},
	hookSockops:  {stepProgOpsEmpty, stepProgOpsLast},
}

// stepDef is one step of the datapath and how often the datapath takes it.
type stepDef struct {
	Key     string
	Label   string
	Hook    string
	Program string
	// Slot counts the step's executions in step_done; PerTestConn is how
	// many the step setup's connection makes (the smoke test's check).
	Slot        int
	PerTestConn float64
	// PerProxied is how often the datapath takes the step for one proxied
	// connection of the connection-rate run (app → sidecar 15001 →
	// upstream, variant 4 or 5: the app's connect, the sidecar's accepted
	// socket, the sidecar's upstream connect); PerMesh for one
	// sidecar-to-sidecar connection on one node with splicing on, in
	// addition. Where says where the datapath does it.
	PerProxied float64
	PerMesh    float64
	Where      string
}

var stepDefs = []stepDef{
	{"storage", "socket storage creation (active)", hookConnect4, stepProgStorage, slotStorage, 1, 1, 1,
		"connect.c remember(): the app's captured connect; a sidecar's shortcut connect"},
	{"bind", "bpf_bind to the pod IP", hookConnect4, stepProgBind, slotBind, 1, 1, 0,
		"connect.c bind_pod_ip(): the app's captured connect"},
	{"generation", "generation array lookup", hookConnect4, stepProgGen, slotGeneration, 1, 2, 1,
		"connect.c current_pod(): every TCP connect in a pod (app and sidecar upstream)"},
	{"cg_hit", "cgroup cache hit (LRU lookup)", hookConnect4, stepProgCgHit, slotCgHit, 1, 2, 1,
		"connect.c current_pod(): every TCP connect in a pod"},
	{"cg_miss", "cgroup cache miss (LRU lookup + update)", hookConnect4, stepProgCgMiss, slotCgMiss, 1, 0, 0,
		"connect.c current_pod(): first connect of a cgroup, and after each pod added (sb_generation); ≈0 per connection"},
	{"passive_storage", "socket storage creation (passive)", hookSockops, stepProgPStore, slotPassiveStorage, 1, 1, 1,
		"sockops.c passive_established(): the sidecar's accepted socket"},
	{"tuple", "tuple hand-off (update, then lookup + delete)", hookSockops, stepProgTuple, slotTupleTake, 1, 1, 1,
		"sockops.c connecting() and passive_established()"},
	{"sockhash", "sockhash update", hookSockops, stepProgSockhash, slotSockhash, 2, 0, 2,
		"sockops.c splice_add(): both ends of a sidecar-to-sidecar connection, splicing on"},
}

// opNames are the sockops ops (enum in linux/bpf.h) as the report prints
// them.
var opNames = map[int]string{
	1: "TIMEOUT_INIT", 2: "RWND_INIT", 3: "TCP_CONNECT_CB", 4: "ACTIVE_ESTABLISHED_CB",
	5: "PASSIVE_ESTABLISHED_CB", 6: "NEEDS_ECN", 7: "BASE_RTT", 8: "RTO_CB", 9: "RETRANS_CB",
	opStateCB: "STATE_CB → TCP_CLOSE", 11: "TCP_LISTEN_CB", 12: "RTT_CB", 13: "PARSE_HDR_OPT_CB",
	14: "HDR_OPT_LEN_CB", 15: "WRITE_HDR_OPT_CB", 30: "(op ≥ 32)", opStateOther: "STATE_CB → other states",
}

// opNeeds says what the datapath (sockops_track: no splicing, no inbound
// capture) does at an op; ops missing here it returns from at once.
var opNeeds = map[int]string{
	3:         "yes: a captured socket publishes its tuple (any other socket: one storage lookup, nothing)",
	4:         "only with splicing (or an upgrade's legacy layout)",
	5:         "yes: the accepted socket takes the tuple",
	opStateCB: "yes: deletes a tuple no child took",
	11:        "only with inbound capture, once per listen()",
}

// stepProgs are the programs attached to the private cgroup per hook:
// each hook's floor first and last, the steps between them in an order
// that rotates from round to round (attachOrder).
var stepProgs = map[string][]string{
	hookConnect4: {stepProgC4Empty, stepProgStorage, stepProgBind, stepProgGen, stepProgCgHit, stepProgCgMiss, stepProgC4EmptyLast},
	hookSockops:  {stepProgOpsEmpty, stepProgOpsCount, stepProgPStore, stepProgTuple, stepProgSockhash, stepProgOpsLast},
}

// Addresses of the step setup, inside its own network namespace.
var (
	stepPodIP      = netip.MustParseAddr("10.250.1.2")
	stepServerPort = 18080
)

// stepRound is what one round measured: the growth of every program's run
// time and count, of the step counters and of the sockops callbacks.
type stepRound struct {
	Round  int
	Conns  uint64
	Progs  map[string]progStat
	Done   [stepSlots]uint64
	Failed [stepSlots]uint64
	Ops    [2 * opSlots]uint64
}

// stepsResults is the section's measurements.
type stepsResults struct {
	Settings settings
	Rounds   []stepRound
	Failures []string
	Before   machineState
	After    machineState
	// Reference is the datapath's own breakdown per proxied connection
	// from the connection-rate runs of this invocation (cost.go), when
	// variant 4 ran.
	Reference []progRow
}

// stepsWorld is the step programs attached to a private cgroup with a
// server in it, in a private network namespace.
type stepsWorld struct {
	t      testutil.TB
	sbpeer string
	ns     *testutil.Netns
	cgroup string
	coll   *ebpf.Collection
	links  []link.Link // the step programs on the cgroup, this round's order
}

// loadStepsSpec parses the embedded object.
func loadStepsSpec() (*ebpf.CollectionSpec, error) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(stepsObject))
	if err != nil {
		return nil, fmt.Errorf("parse the step programs' BPF object: %w", err)
	}
	return spec, nil
}

// runSteps builds the step setup, runs s.Rounds rounds of s.Conns
// connections and returns what they measured. A setup that cannot be
// built fails t; a round that fails is listed under Failures.
func runSteps(t testutil.TB, s settings) *stepsResults {
	t.Helper()
	res := &stepsResults{Settings: s, Before: readMachineState()}
	w := buildStepsWorld(t, s)
	if err := enableBPFStats(t); err != nil {
		t.Fatalf("%v", err)
	}
	for r := 1; r <= s.Rounds; r++ {
		round, err := w.round(r, s.Conns, s.ConnsParallel)
		if err != nil {
			res.Failures = append(res.Failures, fmt.Sprintf("round %d: %v", r, err))
			continue
		}
		res.Rounds = append(res.Rounds, round)
	}
	res.After = readMachineState()
	return res
}

func buildStepsWorld(t testutil.TB, s settings) *stepsWorld {
	t.Helper()
	w := &stepsWorld{t: t, sbpeer: s.Sbpeer}
	if w.sbpeer == "" {
		w.sbpeer = buildSbpeer(t, scratchDir(t))
	}
	suffix := testutil.RandomSuffix()
	root := testutil.Cgroup(t, "", "sockbridge-bench-steps-"+suffix)
	refuseCgroupRoot(t, root)
	w.cgroup = testutil.Cgroup(t, root, "pod")
	w.ns = testutil.NewNetns(t, "sbs"+suffix[:5])
	w.ns.AddLocalAddr(t, stepPodIP)
	if err := w.load(); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { w.coll.Close() })
	if err := w.attach(); err != nil {
		t.Fatalf("%v", err)
	}
	testutil.Start(t, testutil.ProcSpec{Netns: w.ns, Cgroup: w.cgroup,
		Args: []string{w.sbpeer, "serve", "-listen", fmt.Sprintf("127.0.0.1:%d", stepServerPort)}})
	testutil.WaitListening(t, w.ns, stepServerPort)
	return w
}

// load loads the object with the pod IP and server port set, and fills
// the maps the hit steps read: the generation and the client cgroup's
// cache entry.
func (w *stepsWorld) load() error {
	spec, err := loadStepsSpec()
	if err != nil {
		return err
	}
	ip := stepPodIP.As4()
	cfg := stepConfig{PodIP4: binary.NativeEndian.Uint32(ip[:]), ServerPort: uint32(stepServerPort)}
	if err := spec.Variables[stepVarConfig].Set(cfg); err != nil {
		return fmt.Errorf("set %s: %w", stepVarConfig, err)
	}
	if w.coll, err = ebpf.NewCollection(spec); err != nil {
		return fmt.Errorf("load the step programs: %w", err)
	}
	if err := w.coll.Maps[stepMapGeneration].Put(uint32(0), uint64(1)); err != nil {
		return fmt.Errorf("set the generation: %w", err)
	}
	id := testutil.CgroupID(w.t, w.cgroup)
	entry := [2]uint64{id, 1} // struct step_cg_entry: pod cgroup id, generation
	if err := w.coll.Maps[stepMapCgCache].Put(id, entry); err != nil {
		return fmt.Errorf("fill the cgroup cache: %w", err)
	}
	return nil
}

// attachOrder is hook's programs in the order round rot attaches them:
// the floors first and last, the steps between them rotated by rot, so
// that a step's place in the hook's list (the first program meets the
// socket's cache lines cold) moves from round to round instead of biasing
// one step.
func attachOrder(hook string, rot int) []string {
	progs := stepProgs[hook]
	mid := slices.Clone(progs[1 : len(progs)-1])
	k := rot % len(mid)
	mid = append(mid[k:], mid[:k]...)
	return append(append([]string{progs[0]}, mid...), progs[len(progs)-1])
}

// attach attaches the sk_msg program to the sockhash. The map is this
// process's only: it goes, with the program, when the process ends.
func (w *stepsWorld) attach() error {
	opts := link.RawAttachProgramOptions{Target: w.coll.Maps[stepMapSockhash].FD(),
		Program: w.coll.Programs[stepProgMsgPass], Attach: ebpf.AttachSkMsgVerdict}
	if err := link.RawAttachProgram(opts); err != nil {
		return fmt.Errorf("attach %s to %s: %w", stepProgMsgPass, stepMapSockhash, err)
	}
	w.t.Cleanup(func() { link.RawDetachProgram(link.RawDetachProgramOptions(opts)) })
	w.t.Cleanup(w.detachCgroup)
	return nil
}

// attachCgroup (re)attaches every step program to the private cgroup in
// round rot's order (attachOrder), with links held by this process only.
func (w *stepsWorld) attachCgroup(rot int) error {
	w.detachCgroup()
	types := map[string]ebpf.AttachType{hookConnect4: ebpf.AttachCGroupInet4Connect, hookSockops: ebpf.AttachCGroupSockOps}
	for _, hook := range []string{hookConnect4, hookSockops} {
		for _, name := range attachOrder(hook, rot) {
			l, err := link.AttachCgroup(link.CgroupOptions{Path: w.cgroup, Attach: types[hook], Program: w.coll.Programs[name]})
			if err != nil {
				return fmt.Errorf("attach %s to %s: %w", name, w.cgroup, err)
			}
			w.links = append(w.links, l)
		}
	}
	return nil
}

func (w *stepsWorld) detachCgroup() {
	for _, l := range w.links {
		l.Close()
	}
	w.links = nil
}

// counters is the step setup's state at one moment.
type counters struct {
	progs  map[string]progStat
	done   [stepSlots]uint64
	failed [stepSlots]uint64
	ops    [2 * opSlots]uint64
}

func (w *stepsWorld) snapshot() (counters, error) {
	var c counters
	var err error
	if c.progs, err = readProgStats(w.coll.Programs); err != nil {
		return c, err
	}
	read := func(name string, out []uint64) error {
		for i := range out {
			if err := w.coll.Maps[name].Lookup(uint32(i), &out[i]); err != nil {
				return fmt.Errorf("read %s[%d]: %w", name, i, err)
			}
		}
		return nil
	}
	return c, errors.Join(read(stepMapDone, c.done[:]), read(stepMapFailed, c.failed[:]), read(stepMapOps, c.ops[:]))
}

// round runs conns connections through the step setup and returns the
// growth of every counter.
func (w *stepsWorld) round(r, conns, parallel int) (stepRound, error) {
	out := stepRound{Round: r, Progs: map[string]progStat{}}
	if err := w.attachCgroup(r - 1); err != nil {
		return out, err
	}
	before, err := w.snapshot()
	if err != nil {
		return out, err
	}
	spec := testutil.ProcSpec{Netns: w.ns, Cgroup: w.cgroup, Args: []string{w.sbpeer, "conns",
		"-addr", fmt.Sprintf("127.0.0.1:%d", stepServerPort), "-n", strconv.Itoa(conns), "-parallel", strconv.Itoa(parallel)}}
	raw, err := testutil.Output(w.t, 5*time.Minute, spec)
	if err != nil {
		return out, fmt.Errorf("sbpeer conns: %w", err)
	}
	var res peer.Conns
	if err := json.Unmarshal(raw, &res); err != nil {
		return out, fmt.Errorf("decode sbpeer conns output %q: %w", raw, err)
	}
	if res.Failed > 0 || res.OK == 0 {
		return out, fmt.Errorf("%d of %d connections failed, first: %s", res.Failed, conns, res.FirstErr)
	}
	// The server closes its end when it reads the client's FIN: give its
	// last callbacks time to run.
	time.Sleep(200 * time.Millisecond)
	after, err := w.snapshot()
	if err != nil {
		return out, err
	}
	out.Conns = uint64(res.OK)
	for name, a := range after.progs {
		b := before.progs[name]
		out.Progs[name] = progStat{runtime: a.runtime - b.runtime, runs: a.runs - b.runs}
	}
	for i := range out.Done {
		out.Done[i] = after.done[i] - before.done[i]
		out.Failed[i] = after.failed[i] - before.failed[i]
	}
	for i := range out.Ops {
		out.Ops[i] = after.ops[i] - before.ops[i]
	}
	return out, nil
}

// floorPerCall is the mean run time per call of the hook's two empty
// programs in round r.
func (r stepRound) floorPerCall(hook string) float64 {
	f := hookFloors[hook]
	a, b := r.Progs[f[0]], r.Progs[f[1]]
	if a.runs+b.runs == 0 {
		return 0
	}
	return float64((a.runtime + b.runtime).Nanoseconds()) / float64(a.runs+b.runs)
}

// stepNet is the run time of d's program above the floor over round r,
// in ns.
func (r stepRound) stepNet(d stepDef) float64 {
	p := r.Progs[d.Program]
	return float64(p.runtime.Nanoseconds()) - r.floorPerCall(d.Hook)*float64(p.runs)
}

// stepRow is one step's cost over the rounds.
type stepRow struct {
	Def      stepDef
	NsPerRun stat // ns above the floor per execution of the step
	RunsConn stat // executions per test connection
}

func (res *stepsResults) stepRows() []stepRow {
	rows := make([]stepRow, 0, len(stepDefs))
	for _, d := range stepDefs {
		var perRun, runs []float64
		for _, r := range res.Rounds {
			n := r.Done[d.Slot]
			if n == 0 || r.Conns == 0 {
				continue
			}
			perRun = append(perRun, r.stepNet(d)/float64(n))
			runs = append(runs, float64(n)/float64(r.Conns))
		}
		rows = append(rows, stepRow{Def: d, NsPerRun: summarize(perRun), RunsConn: summarize(runs)})
	}
	return rows
}

// opRow is one sockops op's callbacks per connection.
type opRow struct {
	Op              int
	Active, Passive stat // per test connection
	PerProxied      float64
	Needs           string
}

// opRows counts the callbacks per connection by op. Per proxied connection
// the datapath sees two active sockets (the app's, which asks for state
// callbacks, and the sidecar's upstream one, which does not) and one
// passive socket (the sidecar's accepted one; the server is outside the
// pod).
func (res *stepsResults) opRows() []opRow {
	var rows []opRow
	for op := 0; op < opSlots; op++ {
		var act, pas []float64
		for _, r := range res.Rounds {
			if r.Conns == 0 {
				continue
			}
			act = append(act, float64(r.Ops[op])/float64(r.Conns))
			pas = append(pas, float64(r.Ops[opSlots+op])/float64(r.Conns))
		}
		a, p := summarize(act), summarize(pas)
		if a.max == 0 && p.max == 0 {
			continue
		}
		actives := 2.0
		if op == opStateCB || op == opStateOther {
			actives = 1
		}
		needs := opNeeds[op]
		if needs == "" {
			needs = "no"
		}
		rows = append(rows, opRow{Op: op, Active: a, Passive: p, PerProxied: actives*a.median + p.median, Needs: needs})
	}
	return rows
}

// hookCalls is the median calls per test connection of hook's floor.
func (res *stepsResults) hookCalls(hook string) stat {
	var v []float64
	for _, r := range res.Rounds {
		if r.Conns > 0 {
			v = append(v, float64(r.Progs[hookFloors[hook][0]].runs)/float64(r.Conns))
		}
	}
	return summarize(v)
}

// floorStats are the hook's floor per call, first and last program.
func (res *stepsResults) floorStats(hook string) (mean, first, last stat) {
	var m, f, l []float64
	per := func(p progStat) float64 {
		if p.runs == 0 {
			return 0
		}
		return float64(p.runtime.Nanoseconds()) / float64(p.runs)
	}
	for _, r := range res.Rounds {
		m = append(m, r.floorPerCall(hook))
		f = append(f, per(r.Progs[hookFloors[hook][0]]))
		l = append(l, per(r.Progs[hookFloors[hook][1]]))
	}
	return summarize(m), summarize(f), summarize(l)
}

// markdown renders the "Where the time goes" section.
func (res *stepsResults) markdown() string {
	var b strings.Builder
	s := res.Settings
	b.WriteString("## Where the time goes: BPF cost per step\n\n")
	fmt.Fprintf(&b, "Step programs (tests/bench/bpf/steps.c), each doing one step of the datapath on the datapath's hook, attached together with an empty program "+
		"first and last on each hook (the floor; the steps between them in an order rotated every round) to a private cgroup whose client and server make %d loopback connections per round (connect, 1 B echo, close; %d in parallel), "+
		"%d rounds. Cost = run time above the floor (BPF_ENABLE_STATS) per execution of the step; medians, min–max over rounds in parentheses. "+
		"Per proxied connection: how often the datapath takes the step for one app → sidecar → upstream connection (variants 4 and 5). "+
		"Load average %s before, %s after.\n\n", s.Conns, s.ConnsParallel, len(res.Rounds), res.Before.LoadAvg, res.After.LoadAvg)
	if len(res.Rounds) == 0 {
		b.WriteString("No round completed.\n\n")
		writeFailureList(&b, "**Failures**\n\n", res.Failures)
		return b.String()
	}
	b.WriteString("| step | hook | ns per execution | executions per test connection | per proxied connection | ns per proxied connection | per sidecar-to-sidecar connection (splice) |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|\n")
	var stepsTotal float64
	shares := map[string]hookShare{}
	for _, row := range res.stepRows() {
		d := row.Def
		perConn := row.NsPerRun.median * d.PerProxied
		stepsTotal += perConn
		sh := shares[d.Hook]
		sh.steps += perConn
		shares[d.Hook] = sh
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", d.Label, d.Hook, row.NsPerRun, row.RunsConn,
			format(d.PerProxied), format(perConn), format(d.PerMesh))
	}
	b.WriteString("\n")

	ops := res.opRows()
	var opsProxied, opsNeeded float64
	for _, o := range ops {
		opsProxied += o.PerProxied
		if o.Needs != "no" && !strings.HasPrefix(o.Needs, "only") {
			opsNeeded += o.PerProxied
		}
	}
	c4Mean, c4First, c4Last := res.floorStats(hookConnect4)
	opsMean, opsFirst, opsLast := res.floorStats(hookSockops)
	b.WriteString("**Floor** (an empty program; mean of the first and the last on the hook):\n\n")
	b.WriteString("| hook | ns per call | first | last | calls per test connection | calls per proxied connection | ns per proxied connection |\n|---|---:|---:|---:|---:|---:|---:|\n")
	c4Proxied := 2.0 // the app's connect and the sidecar's upstream connect
	fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", hookConnect4, c4Mean, c4First, c4Last, res.hookCalls(hookConnect4),
		format(c4Proxied), format(c4Mean.median*c4Proxied))
	fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n\n", hookSockops, opsMean, opsFirst, opsLast, res.hookCalls(hookSockops),
		format(opsProxied), format(opsMean.median*opsProxied))
	floors := c4Mean.median*c4Proxied + opsMean.median*opsProxied
	for hook, st := range map[string]stat{hookConnect4: c4Mean, hookSockops: opsMean} {
		sh := shares[hook]
		sh.floorPerCall = st.median
		shares[hook] = sh
	}
	fmt.Fprintf(&b, "Accounted for per proxied connection on connect4 and sockops: steps %s ns + floors %s ns = **%s ns** "+
		"(plus getpeername and getsockopt, 2 calls each, not split into steps here; target ≤ %d ns for everything).\n\n",
		format(stepsTotal), format(floors), format(stepsTotal+floors), bpfPerConnTargetNs)
	res.writeReference(&b, shares, stepsTotal+floors)

	b.WriteString("**sockops callbacks by op** (test connection: one active and one passive socket in the cgroup; the client asks for state callbacks at TCP_CONNECT_CB, as the datapath does for a captured socket. " +
		"Per proxied connection: 2 × active (the app's socket and the sidecar's upstream one; state callbacks only on the app's) + 1 × passive (the sidecar's accepted socket)):\n\n")
	b.WriteString("| op | active, per test connection | passive, per test connection | per proxied connection | the datapath (no splice) needs it |\n|---|---:|---:|---:|---|\n")
	for _, o := range ops {
		name := opNames[o.Op]
		if name == "" {
			name = "op " + strconv.Itoa(o.Op)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", name, o.Active, o.Passive, format(o.PerProxied), o.Needs)
	}
	fmt.Fprintf(&b, "\n%s sockops callbacks per proxied connection, of which %s at ops the datapath does anything at; the others cost a floor each: %s ns.\n\n",
		format(opsProxied), format(opsNeeded), format(opsMean.median*(opsProxied-opsNeeded)))
	writeFailureList(&b, "**Failures**\n\n", res.Failures)
	return b.String()
}

// hookShare is what the section accounts for on one hook per proxied
// connection: the floor per call and the steps' ns.
type hookShare struct {
	floorPerCall float64
	steps        float64
}

// referenceHook is the hook a datapath program runs on, by its name; ""
// for a hook the section does not split.
func referenceHook(program string) string {
	switch {
	case strings.HasPrefix(program, "connect4"):
		return hookConnect4
	case strings.HasPrefix(program, "sockops"):
		return hookSockops
	}
	return ""
}

// writeReference sets the steps and floors beside the datapath's own
// programs from this invocation's connection-rate runs: per program, its
// calls times the floor, the steps it takes, and the rest (its other
// work: lookups, checks, counters).
func (res *stepsResults) writeReference(b *strings.Builder, shares map[string]hookShare, accounted float64) {
	if len(res.Reference) == 0 {
		b.WriteString("The datapath's own run time per connection (cost.go's breakdown) is set beside these when variant 4 runs in the same invocation.\n\n")
		return
	}
	var total float64
	b.WriteString("Beside the datapath's own programs over this invocation's connection-rate runs (variant 4, cost.go; ns per connection):\n\n")
	b.WriteString("| program | calls per connection | ns per connection | floor × calls | steps above | rest |\n|---|---:|---:|---:|---:|---:|\n")
	for _, row := range res.Reference {
		total += row.NsUnit.median
		sh, ok := shares[referenceHook(row.Program)]
		if !ok {
			fmt.Fprintf(b, "| %s | %s | %s | – | – | – |\n", row.Program, row.PerUnit, row.NsUnit)
			continue
		}
		floor := sh.floorPerCall * row.PerUnit.median
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", row.Program, row.PerUnit, row.NsUnit, format(floor), format(sh.steps),
			format(row.NsUnit.median-floor-sh.steps))
	}
	fmt.Fprintf(b, "\nDatapath total %s ns per connection; the steps and floors above account for %s ns of it (%.0f%%).\n\n",
		format(total), format(accounted), 100*accounted/total)
}

// writeFiles writes steps.csv (one row per round and program) and
// steps.md to dir.
func (res *stepsResults) writeFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	rows := [][]string{{"round", "program", "hook", "step", "calls", "runtime_ns", "connections", "step_executions", "step_failures", "floor_ns_per_call", "ns_above_floor_per_execution"}}
	byProg := map[string]stepDef{}
	for _, d := range stepDefs {
		byProg[d.Program] = d
	}
	hookOf := map[string]string{stepProgMsgPass: "sk_msg"}
	for hook, progs := range stepProgs {
		for _, p := range progs {
			hookOf[p] = hook
		}
	}
	for _, r := range res.Rounds {
		for _, hook := range []string{hookConnect4, hookSockops, "sk_msg"} {
			for _, name := range slices.Sorted(maps.Keys(r.Progs)) {
				p := r.Progs[name]
				if hookOf[name] != hook {
					continue
				}
				row := []string{strconv.Itoa(r.Round), name, hook, "", strconv.FormatUint(p.runs, 10),
					strconv.FormatInt(p.runtime.Nanoseconds(), 10), strconv.FormatUint(r.Conns, 10), "", "", "", ""}
				if hook != "sk_msg" {
					row[9] = strconv.FormatFloat(r.floorPerCall(hook), 'f', 1, 64)
				}
				if d, ok := byProg[name]; ok {
					row[3] = d.Key
					row[7] = strconv.FormatUint(r.Done[d.Slot], 10)
					row[8] = strconv.FormatUint(r.Failed[d.Slot], 10)
					if r.Done[d.Slot] > 0 {
						row[10] = strconv.FormatFloat(r.stepNet(d)/float64(r.Done[d.Slot]), 'f', 1, 64)
					}
				}
				rows = append(rows, row)
			}
		}
	}
	if err := writeCSV(filepath.Join(dir, "steps.csv"), rows); err != nil {
		return fmt.Errorf("write steps.csv: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "steps.md"), []byte(res.markdown()), 0o644); err != nil {
		return fmt.Errorf("write steps.md: %w", err)
	}
	return nil
}

// runStepsSection runs the section for make bench, writes steps.csv and
// steps.md to s.Out and prints the markdown. ref is cost.go's breakdown
// of this invocation's connection-rate runs, nil when they did not run.
func runStepsSection(t testutil.TB, s settings, ref []progRow) error {
	res := runSteps(t, s)
	for _, row := range ref {
		if row.Variant == sockbridge {
			res.Reference = append(res.Reference, row)
		}
	}
	if err := res.writeFiles(s.Out); err != nil {
		return err
	}
	fmt.Print(res.markdown())
	t.Logf("per-step costs in %s (steps.md, steps.csv)", s.Out)
	if len(res.Failures) > 0 {
		return fmt.Errorf("%d step round(s) failed (listed under Failures)", len(res.Failures))
	}
	return nil
}
