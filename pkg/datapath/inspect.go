package datapath

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
)

// MapFill is how full one of the datapath's bounded maps is.
type MapFill struct {
	Name string
	// Entries is the number of keys at the time of reading (maps change
	// while they are walked: a count, not a snapshot).
	Entries int
	// MaxEntries is the capacity the map was created with.
	MaxEntries uint32
}

// countedMapTypes are the map types whose fill is counted: keyed maps with a
// capacity. Arrays are always full, and socket storage has no capacity (it
// lives with the sockets) and cannot be walked.
var countedMapTypes = []ebpf.MapType{ebpf.Hash, ebpf.LRUHash, ebpf.LPMTrie, ebpf.SockHash}

// MapFill counts the entries of every bounded map the datapath loaded,
// ordered by name. It walks keys only (BPF_MAP_GET_NEXT_KEY), so it does not
// depend on the maps' key and value layouts. Layout 1's sb_tuples is
// counted as sb_tuples_v1 while the programs read it (LegacyInUse), and
// its placeholder is left out otherwise.
func (dp *Datapath) MapFill() ([]MapFill, error) {
	if dp.coll == nil {
		return nil, errors.New("map fill: datapath closed")
	}
	var (
		out  []MapFill
		errs []error
	)
	for name, m := range dp.coll.Maps {
		if !slices.Contains(countedMapTypes, m.Type()) || (name == datapathMapSbTuplesV1 && !dp.legacy) {
			continue
		}
		n, err := countKeys(m)
		if err != nil {
			errs = append(errs, fmt.Errorf("count %s: %w", name, err))
			continue
		}
		out = append(out, MapFill{Name: name, Entries: n, MaxEntries: m.MaxEntries()})
	}
	slices.SortFunc(out, func(a, b MapFill) int { return strings.Compare(a.Name, b.Name) })
	return out, errors.Join(errs...)
}

// countKeys walks m's keys. A key deleted under the walk restarts it at the
// first key in some map types; the walk stops after twice the capacity.
func countKeys(m *ebpf.Map) (int, error) {
	var (
		key any // nil: the first key
		n   int
	)
	for limit := 2 * int(m.MaxEntries()); n < limit; n++ {
		next, err := m.NextKeyBytes(key)
		if err != nil {
			return n, err
		}
		if next == nil {
			return n, nil
		}
		key = next
	}
	return n, nil
}

// ProgramRun is the kernel's run-time statistics of one of the datapath's
// programs.
type ProgramRun struct {
	Name     string
	Runtime  time.Duration
	RunCount uint64
}

// StatsSysctl is the switch of the kernel's BPF run-time statistics.
const StatsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

// KernelStatsEnabled reports whether the kernel accounts BPF programs' run
// time (sysctl kernel.bpf_stats_enabled=1, or a BPF_ENABLE_STATS holder).
func KernelStatsEnabled() (bool, error) {
	b, err := os.ReadFile(StatsSysctl)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", StatsSysctl, err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// ProgramRuns returns the run time and run count of every program this
// agent loaded, ordered by name. The kernel only counts while its BPF
// statistics are on (KernelStatsEnabled); kernel 5.8.
func (dp *Datapath) ProgramRuns() ([]ProgramRun, error) {
	if dp.coll == nil {
		return nil, errors.New("program stats: datapath closed")
	}
	var (
		out  []ProgramRun
		errs []error
	)
	for name, p := range dp.coll.Programs {
		st, err := p.Stats()
		if err != nil {
			errs = append(errs, fmt.Errorf("stats of %s: %w", name, err))
			continue
		}
		out = append(out, ProgramRun{Name: name, Runtime: st.Runtime, RunCount: st.RunCount})
	}
	slices.SortFunc(out, func(a, b ProgramRun) int { return strings.Compare(a.Name, b.Name) })
	return out, errors.Join(errs...)
}

// CounterNames returns the names of the datapath counters (sb_stats), in
// index order, as Stats names them.
func (dp *Datapath) CounterNames() []string { return dp.counters.Names() }
