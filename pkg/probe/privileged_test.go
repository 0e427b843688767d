package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/rlimit"

	"github.com/sockbridge/sockbridge/internal/testutil"
)

// Privileged tests: the real probe on this kernel. Under CI=true a missing
// privilege fails them instead of skipping.

func TestMain(m *testing.M) {
	RunHelperIfRequested()
	if err := rlimit.RemoveMemlock(); err != nil && os.Geteuid() == 0 {
		fmt.Fprintln(os.Stderr, "remove memlock rlimit:", err)
		os.Exit(1)
	}
	testutil.Main(m, "probe")
}

// parentCgroup is a test-owned cgroup for the probe's temporary cgroups, so
// that leftovers are told apart from concurrent runs elsewhere.
func parentCgroup(t *testing.T) string {
	return testutil.Cgroup(t, "", CgroupPrefix+"test-"+testutil.RandomSuffix())
}

func TestRunOnThisKernel(t *testing.T) {
	testutil.RequirePrivileged(t, "bpftool")
	parent := parentCgroup(t)
	before := snapshot(t)

	start := time.Now()
	r, err := Run(context.Background(), Options{CgroupParent: parent})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("probe took %v (report: %d ms), %d features", took, r.DurationMS, len(r.Features))
	// Every feature is there, except the self-tests that catch a bug this
	// kernel is known to have: those must fail as self-tests (the feature
	// exists and misbehaves), and only those.
	hazards := testutil.KnownHazards()
	for _, f := range r.Features {
		switch {
		case hazards[f.Name] && f.Supported:
			t.Errorf("%s %s passed, but %s says this kernel has the bug it detects", f.Kind, f.Name, testutil.KnownHazardsEnv)
		case hazards[f.Name] && f.Cause != CauseSelfTestFailed:
			t.Errorf("%s %s: cause %q, want %q: %s", f.Kind, f.Name, f.Cause, CauseSelfTestFailed, f.Error)
		case hazards[f.Name]:
			t.Logf("%s %s fails as expected on this kernel: %s", f.Kind, f.Name, f.Error)
		case !f.Supported:
			t.Errorf("%s %s: not supported on this kernel (%s): %s", f.Kind, f.Name, f.Cause, f.Error)
		}
	}
	if err := r.Err(); err != nil {
		t.Errorf("Err() = %v", err)
	}
	wantSplice := !hazards["selftest/splice"]
	if p := r.Plan(); !p.Capture || p.Splice != wantSplice {
		t.Errorf("plan %+v, want capture on and splice %v", p, wantSplice)
	}
	checkNothingLeft(t, parent, before)
}

// Without their programs, the self-tests must fail: they test the
// programs, not the loopback.
func TestSelfTestsFailWithoutPrograms(t *testing.T) {
	testutil.RequirePrivileged(t)
	parent := parentCgroup(t)
	before := snapshot(t)
	top, err := makeCgroup(parent, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroup(top) })
	for _, st := range selfTests() {
		st.hooks = nil
		f := runSelfTest(context.Background(), top, st)
		if f.Supported {
			t.Errorf("%s passed without its programs: %s", f.Name, f.Detail)
		} else {
			t.Logf("%s without programs: %s", f.Name, f.Error)
		}
	}
	if err := removeCgroup(top); err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, parent, before)
}

// The command as operators run it: exit codes, --json against the
// documented schema, the plan lines.
func TestProbeCommand(t *testing.T) {
	testutil.RequirePrivileged(t, "bpftool")
	bin := filepath.Join(t.TempDir(), "sockbridge")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/sockbridge").CombinedOutput(); err != nil {
		t.Fatalf("build sockbridge: %v\n%s", err, out)
	}
	parent := parentCgroup(t)
	before := snapshot(t)

	tests := []struct {
		name      string
		args      []string
		exit      int
		json      bool
		stdout    []string // substrings
		stderr    string   // substring
		splice    bool
		oneLineRC bool // stderr is exactly one line
	}{
		{name: "json", args: []string{"--json"}, exit: 0, json: true, splice: true},
		{name: "table", args: nil, exit: 0, stdout: []string{"selftest/splice", "capture: on\nipv6: on\ninbound: on\nsplice: on\ndns: on\n"}},
		{name: "splice forced off", args: []string{"--json", "--without", "selftest/splice"}, exit: 0, json: true},
		{name: "splice forced off, table", args: []string{"--without", "sockhash"}, exit: 0,
			stdout: []string{"capture: on\nipv6: on\ndns: on\ninbound: off because sockhash map type turned off on request\nsplice: off because sockhash map type turned off on request"}},
		{name: "essential missing", args: []string{"--without", "cgroup/getpeername4"}, exit: 1,
			stdout: []string{"capture: off because cgroup/getpeername4"}, stderr: "cgroup/getpeername4 attach type turned off on request", oneLineRC: true},
		{name: "essential missing, json", args: []string{"--json", "--without", "bpf_link/cgroup"}, exit: 1, json: true,
			stderr: "bpf_link/cgroup", oneLineRC: true},
		{name: "unknown feature", args: []string{"--without", "warp_drive"}, exit: 2, stderr: "no such feature"},
		{name: "argument", args: []string{"now"}, exit: 2, stderr: "no arguments"},
		{name: "unknown flag", args: []string{"--yaml"}, exit: 2, stderr: "unknown flag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"probe", "--cgroup-parent", parent}, tt.args...)
			cmd := exec.Command(bin, args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				code = exit.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.exit {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.exit, stdout.String(), stderr.String())
			}
			for _, want := range tt.stdout {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout does not contain %q:\n%s", want, stdout.String())
				}
			}
			if !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.stderr)
			}
			// Nothing was missing for age on this kernel: the reason
			// must not blame its version.
			if strings.Contains(stderr.String(), "needs Linux") {
				t.Errorf("stderr %q blames the kernel version", stderr.String())
			}
			if tt.oneLineRC && strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 {
				t.Errorf("stderr is not one line: %q", stderr.String())
			}
			if !tt.json {
				return
			}
			if err := validateJSON(t, stdout.Bytes()); err != nil {
				t.Errorf("--json output does not match %s: %v\n%s", schemaPath, err, stdout.String())
			}
			var out struct{ Plan Plan }
			if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
				t.Fatal(err)
			}
			if out.Plan.Splice != tt.splice || out.Plan.Capture != (tt.exit == 0) {
				t.Errorf("plan %+v, want capture %v splice %v", out.Plan, tt.exit == 0, tt.splice)
			}
		})
	}
	checkNothingLeft(t, parent, before)
}

// state is what the leak checks compare.
type state struct {
	bpfFDs int
}

func snapshot(t *testing.T) state {
	t.Helper()
	return state{bpfFDs: countBPFFDs(t)}
}

// checkNothingLeft checks that the probe left no cgroup under parent, no
// BPF program or map of its own (bpftool), no BPF file descriptor in this
// process and no helper process (whose network namespace dies with it).
func checkNothingLeft(t *testing.T, parent string, before state) {
	t.Helper()
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("cgroup %s left behind", filepath.Join(parent, e.Name()))
		}
	}
	if n := countBPFFDs(t); n > before.bpfFDs {
		t.Errorf("%d BPF file descriptors left open (%d before)", n, before.bpfFDs)
	}
	if kids := children(t); len(kids) > 0 {
		t.Errorf("helper processes left running: %v", kids)
	}
	// The kernel frees programs and maps shortly after their last
	// reference goes (socket maps from a workqueue): poll briefly.
	var left []string
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left = leftoverObjects(t)
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("BPF objects left behind: %v", left)
	}
}

// leftoverObjects lists loaded programs and maps bearing the probe's names.
// Another probe run on the machine at the same time would show up here
// too; the poll in checkNothingLeft outlasts such a run.
func leftoverObjects(t *testing.T) []string {
	t.Helper()
	spec, err := loadProbeSpec()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{"sbp_trivial": true}
	for name := range spec.Programs {
		names[name[:min(len(name), 15)]] = true // BPF_OBJ_NAME_LEN - 1
	}
	for name := range spec.Maps {
		if strings.HasPrefix(name, "sbp_") {
			names[name] = true
		}
	}
	var left []string
	for _, what := range []string{"prog", "map"} {
		out, err := exec.Command("bpftool", "-j", what, "show").Output()
		if err != nil {
			t.Fatalf("bpftool %s show: %v", what, err)
		}
		var objs []struct {
			ID   int    `json:"id"`
			Name string `json:"name"`
		}
		if err := json.Unmarshal(out, &objs); err != nil {
			t.Fatalf("parse bpftool %s show: %v", what, err)
		}
		for _, o := range objs {
			if names[o.Name] {
				left = append(left, fmt.Sprintf("%s %d %s", what, o.ID, o.Name))
			}
		}
	}
	return left
}

func countBPFFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if strings.HasPrefix(target, "anon_inode:bpf") {
			n++
		}
	}
	return n
}

// children lists the processes whose parent is this one.
func children(t *testing.T) []int {
	t.Helper()
	procs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self := os.Getpid()
	var kids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, split after ')'.
		i := bytes.LastIndexByte(stat, ')')
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(self) {
			kids = append(kids, pid)
		}
	}
	slices.Sort(kids)
	return kids
}

// An agent killed during its start-up probe leaves the probe's temporary
// cgroups behind; the next probe removes those untouched for staleAfter
// with no process inside, and nothing younger (a probe running now).
func TestRunRemovesStaleProbeCgroups(t *testing.T) {
	testutil.RequirePrivileged(t)
	parent := parentCgroup(t)
	stale := filepath.Join(parent, CgroupPrefix+"deadbeef")
	fresh := filepath.Join(parent, CgroupPrefix+"0ddba11")
	for _, dir := range []string{filepath.Join(stale, "connect4"), filepath.Join(fresh, "connect4")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * staleAfter)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), Options{CgroupParent: parent}); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale probe cgroup %s still there (%v)", stale, err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a recent probe cgroup was removed: %v", err)
	}
}
