package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/internal/testutil"
)

// cgroupUsage returns the CPU time (user + system, including softirq work
// done in the context of the cgroup's tasks) the cgroup and its
// descendants used, from cgroup v2 cpu.stat.
func cgroupUsage(path string) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join(path, "cpu.stat"))
	if err != nil {
		return 0, fmt.Errorf("read cpu.stat: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse cpu.stat usage_usec %q: %w", v, err)
			}
			return time.Duration(us) * time.Microsecond, nil
		}
	}
	return 0, fmt.Errorf("no usage_usec in %s/cpu.stat", path)
}

// nodeCPU is the machine-wide /proc/stat "cpu" line in clock ticks.
type nodeCPU struct {
	busy, steal, total uint64
}

// userHZ is the unit of /proc/stat: USER_HZ, 100 on every Linux ABI.
const userHZ = 100

func readNodeCPU() (nodeCPU, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return nodeCPU{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 9 || fields[0] != "cpu" {
			continue
		}
		// user nice system idle iowait irq softirq steal [guest...]
		var v [8]uint64
		for i := range v {
			v[i], _ = strconv.ParseUint(fields[i+1], 10, 64)
		}
		c := nodeCPU{busy: v[0] + v[1] + v[2] + v[5] + v[6], steal: v[7]}
		for _, x := range v {
			c.total += x
		}
		return c, nil
	}
	return nodeCPU{}, errors.New("no cpu line in /proc/stat")
}

func (c nodeCPU) sub(o nodeCPU) nodeCPU {
	return nodeCPU{busy: c.busy - o.busy, steal: c.steal - o.steal, total: c.total - o.total}
}

// busyTime is the CPU time of every process and of interrupt handling on
// the machine, ours and everybody else's.
func (c nodeCPU) busyTime() time.Duration { return time.Duration(c.busy) * time.Second / userHZ }

// cpuMeter reads the CPU time of a set of cgroups and of the machine.
type cpuMeter struct {
	cgroups []string
	start   time.Duration
	node    nodeCPU
}

func startCPU(cgroups ...string) (*cpuMeter, error) {
	m := &cpuMeter{cgroups: cgroups}
	var err error
	if m.start, err = m.usage(); err != nil {
		return nil, err
	}
	if m.node, err = readNodeCPU(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *cpuMeter) usage() (time.Duration, error) {
	var sum time.Duration
	for _, cg := range m.cgroups {
		u, err := cgroupUsage(cg)
		if err != nil {
			return 0, err
		}
		sum += u
	}
	return sum, nil
}

// stop returns the cgroups' CPU time and the machine's busy time since
// start.
func (m *cpuMeter) stop() (cgroups, node time.Duration, err error) {
	u, err := m.usage()
	if err != nil {
		return 0, 0, err
	}
	n, err := readNodeCPU()
	if err != nil {
		return 0, 0, err
	}
	return u - m.start, n.sub(m.node).busyTime(), nil
}

// progStat is one BPF program's cumulative run time and run count.
type progStat struct {
	runtime time.Duration
	runs    uint64
}

// bpfPrograms finds every program that uses a map pinned in pinDir: the
// cgroup programs and any program attached to a map (sk_msg), without
// relying on how the datapath pins its links.
func bpfPrograms(pinDir string) (map[string]*ebpf.Program, error) {
	mapIDs, err := pinnedMapIDs(pinDir)
	if err != nil {
		return nil, err
	}
	progs := map[string]*ebpf.Program{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return progs, nil
		}
		if err != nil {
			closeAll(progs)
			return nil, fmt.Errorf("list BPF programs: %w", err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		name, ours := programOf(p, mapIDs)
		if !ours {
			p.Close()
			continue
		}
		progs[name] = p
	}
}

func programOf(p *ebpf.Program, mapIDs map[ebpf.MapID]bool) (string, bool) {
	info, err := p.Info()
	if err != nil {
		return "", false
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		if mapIDs[id] {
			return info.Name, true
		}
	}
	return "", false
}

func pinnedMapIDs(pinDir string) (map[ebpf.MapID]bool, error) {
	entries, err := os.ReadDir(pinDir)
	if err != nil {
		return nil, fmt.Errorf("list pinned maps: %w", err)
	}
	ids := map[ebpf.MapID]bool{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, e.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			continue // a pinned program or link
		}
		if info, err := m.Info(); err == nil {
			if id, ok := info.ID(); ok {
				ids[id] = true
			}
		}
		m.Close()
	}
	return ids, nil
}

func closeAll(progs map[string]*ebpf.Program) {
	for _, p := range progs {
		p.Close()
	}
}

func readProgStats(progs map[string]*ebpf.Program) (map[string]progStat, error) {
	out := make(map[string]progStat, len(progs))
	for name, p := range progs {
		s, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", name, err)
		}
		out[name] = progStat{runtime: s.Runtime, runs: s.RunCount}
	}
	return out, nil
}

// enableBPFStats turns on run-time accounting of BPF programs, as
// `sysctl kernel.bpf_stats_enabled=1` does, through BPF_ENABLE_STATS
// (kernel 5.8): the kernel counts holders, so the sysctl's value is never
// changed and accounting stops when the returned closer is closed or the
// benchmark dies, even by SIGKILL.
func enableBPFStats(t testutil.TB) error {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("enable BPF run-time stats (kernel 5.8): %w", err)
	}
	t.Cleanup(func() { c.Close() })
	return nil
}

// machineState is what says whether the machine was busy.
type machineState struct {
	At      time.Time
	LoadAvg string // 1, 5 and 15 minute load averages
	CPU     nodeCPU
}

func readMachineState() machineState {
	s := machineState{At: time.Now()}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			s.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	s.CPU, _ = readNodeCPU()
	return s
}
