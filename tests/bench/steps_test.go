package main

import (
	"encoding/binary"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
)

// TestStepsObjectNames checks the names steps.go uses against the compiled
// object, which has no generated bindings to do it: its programs are
// exactly the ones the report attaches and names, every step names one of
// them, and the config layout matches.
func TestStepsObjectNames(t *testing.T) {
	spec, err := loadStepsSpec()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{stepProgMsgPass}
	for _, progs := range stepProgs {
		want = append(want, progs...)
	}
	slices.Sort(want)
	if got := slices.Sorted(maps.Keys(spec.Programs)); !slices.Equal(got, want) {
		t.Errorf("object has programs %v, steps.go attaches %v", got, want)
	}
	for _, d := range stepDefs {
		if !slices.Contains(stepProgs[d.Hook], d.Program) {
			t.Errorf("step %s: program %s is not attached on %s", d.Key, d.Program, d.Hook)
		}
		if d.Slot < 0 || d.Slot >= stepSlots {
			t.Errorf("step %s: slot %d out of range", d.Key, d.Slot)
		}
	}
	for hook, f := range hookFloors {
		for rot := range 7 {
			progs := attachOrder(hook, rot)
			if progs[0] != f[0] || progs[len(progs)-1] != f[1] {
				t.Errorf("%s, round %d: the floors %v are not first and last of %v", hook, rot+1, f, progs)
			}
			if !slices.Equal(slices.Sorted(slices.Values(progs)), slices.Sorted(slices.Values(stepProgs[hook]))) {
				t.Errorf("%s, round %d: attaches %v, not the hook's programs %v", hook, rot+1, progs, stepProgs[hook])
			}
		}
	}
	var objMaps []string
	for name := range spec.Maps {
		if name[0] != '.' {
			objMaps = append(objMaps, name)
		}
	}
	slices.Sort(objMaps)
	wantMaps := []string{stepMapCgCache, stepMapCgMiss, stepMapDone, stepMapFailed, stepMapGeneration,
		stepMapOps, stepMapSockhash, stepMapSocks, stepMapTuples}
	slices.Sort(wantMaps)
	if !slices.Equal(objMaps, wantMaps) {
		t.Errorf("object has maps %v, steps.go uses %v", objMaps, wantMaps)
	}
	for name, n := range map[string]uint32{stepMapDone: stepSlots, stepMapFailed: stepSlots, stepMapOps: 2 * opSlots} {
		if m := spec.Maps[name]; m != nil && m.MaxEntries != n {
			t.Errorf("map %s has %d entries, steps.go reads %d", name, m.MaxEntries, n)
		}
	}
	v, ok := spec.Variables[stepVarConfig]
	if !ok {
		t.Fatalf("object has no variable %s", stepVarConfig)
	}
	if got, want := int(v.Size()), binary.Size(stepConfig{}); got != want {
		t.Errorf("struct step_config is %d bytes, stepConfig %d", got, want)
	}
}

// TestStepsSmoke runs the section with tiny sizes and checks that every
// step program ran for every connection and did its step the expected
// number of times, that no step failed, and that the report names every
// step. No timing is asserted.
func TestStepsSmoke(t *testing.T) {
	testutil.RequirePrivileged(t, "go", "ip", "nsenter", "ss")
	s := defaultSettings().smoke()
	s.Rounds, s.Conns = 2, 40
	s.Out = t.TempDir()
	res := runSteps(t, s)
	if err := res.writeFiles(s.Out); err != nil {
		t.Errorf("write results: %v", err)
	}
	md := res.markdown()
	logSection(t, md, res.Failures)
	if len(res.Rounds) != s.Rounds {
		t.Fatalf("%d rounds completed, want %d", len(res.Rounds), s.Rounds)
	}
	for _, r := range res.Rounds {
		if r.Conns != uint64(s.Conns) {
			t.Errorf("round %d: %d connections, want %d", r.Round, r.Conns, s.Conns)
		}
		for _, name := range stepProgs[hookConnect4] {
			if got := r.Progs[name].runs; got != r.Conns {
				t.Errorf("round %d: %s ran %d times for %d connects", r.Round, name, got, r.Conns)
			}
		}
		floor := r.Progs[stepProgOpsEmpty].runs
		if floor < 4*r.Conns {
			t.Errorf("round %d: %d sockops callbacks for %d connections, want at least 4 each", r.Round, floor, r.Conns)
		}
		for _, name := range stepProgs[hookSockops] {
			if got := r.Progs[name].runs; got != floor {
				t.Errorf("round %d: %s ran %d times, %s %d: every program on the hook sees every callback", r.Round, name, got, stepProgOpsEmpty, floor)
			}
		}
		var ops uint64
		for _, n := range r.Ops {
			ops += n
		}
		if ops != floor {
			t.Errorf("round %d: step_ops counted %d callbacks, the hook ran %d", r.Round, ops, floor)
		}
		want := map[int]float64{slotTuplePut: 1}
		for _, d := range stepDefs {
			want[d.Slot] = d.PerTestConn
		}
		for slot, per := range want {
			if got, exp := r.Done[slot], uint64(per*float64(r.Conns)); got != exp {
				t.Errorf("round %d: step slot %d done %d times, want %d", r.Round, slot, got, exp)
			}
			if r.Failed[slot] != 0 {
				t.Errorf("round %d: step slot %d failed %d times", r.Round, slot, r.Failed[slot])
			}
		}
		for _, op := range []int{3, 4, 5, opStateCB} {
			side := 0
			if op == 5 {
				side = 1
			}
			if got := r.Ops[side*opSlots+op]; got != r.Conns {
				t.Errorf("round %d: op %s seen %d times for %d connections", r.Round, opNames[op], got, r.Conns)
			}
		}
	}
	for _, d := range stepDefs {
		if !strings.Contains(md, "| "+d.Label+" |") {
			t.Errorf("the report has no row for %s", d.Label)
		}
	}
}

// TestStepsReport checks the arithmetic on a made-up round: a step's cost
// is its run time above the mean floor per execution, and the reference
// table splits a datapath program into floor, steps and rest.
func TestStepsReport(t *testing.T) {
	const conns = 100
	r := stepRound{Round: 1, Conns: conns, Progs: map[string]progStat{}}
	for _, name := range stepProgs[hookConnect4] {
		r.Progs[name] = progStat{runtime: 100 * conns, runs: conns} // 100 ns per call
	}
	r.Progs[stepProgC4EmptyLast] = progStat{runtime: 80 * conns, runs: conns} // floor: mean 90
	r.Progs[stepProgBind] = progStat{runtime: 590 * conns, runs: conns}       // 500 above the floor
	for _, name := range stepProgs[hookSockops] {
		r.Progs[name] = progStat{runtime: 13 * 50 * conns, runs: 13 * conns} // 50 ns per call
	}
	for _, d := range stepDefs {
		r.Done[d.Slot] = uint64(d.PerTestConn * conns)
	}
	res := &stepsResults{Settings: defaultSettings(), Rounds: []stepRound{r},
		Reference: []progRow{{Variant: sockbridge, Program: "connect4_redirect",
			PerUnit: summarize([]float64{2}), NsUnit: summarize([]float64{2000})}}}
	var bind stepRow
	for _, row := range res.stepRows() {
		if row.Def.Key == "bind" {
			bind = row
		}
	}
	if bind.NsPerRun.median != 500 {
		t.Errorf("bind: %v ns per execution, want 500", bind.NsPerRun.median)
	}
	md := res.markdown()
	// connect4_redirect: 2 calls × 90 ns floor; steps: bind 500 + storage,
	// generation and cache hit 10 each (×1, ×2, ×2) = 550; rest 2000-180-550.
	if want := "| connect4_redirect | 2.00 | 2000 | 180 | 550 | 1270 |"; !strings.Contains(md, want) {
		t.Errorf("report lacks %q:\n%s", want, md)
	}
}
