package main

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// TestScalingBenchSmoke runs the scaling benchmark with tiny sizes and
// checks that at every point the maps held what was asked for during the
// measurement and were back at their baseline afterwards, and that every
// point was measured. No timing is asserted.
func TestScalingBenchSmoke(t *testing.T) {
	testutil.RequirePrivileged(t, append([]string{"go"}, requiredTools...)...)
	s := defaultSettings().smoke()
	s.Command = "go test ./tests/bench -run TestScalingBenchSmoke"
	res := runScaling(t, s)
	if res.Note != "" {
		t.Fatalf("not measured: %s", res.Note)
	}
	if err := res.writeFiles(t.TempDir()); err != nil {
		t.Errorf("write results: %v", err)
	}
	logSection(t, res.markdown(), res.Failures)
	checked := map[scalePoint]bool{}
	for _, c := range res.Checks {
		checked[c.Point] = true
		if c.Held != c.Want || c.HeldAfter != c.Want {
			t.Errorf("%s %s: the map held %d, then %d; want %d", c.Point.Axis, c.Point, c.Held, c.HeldAfter, c.Want)
		}
		if c.After != c.Baseline {
			t.Errorf("%s %s: %d entries afterwards, %d before", c.Point.Axis, c.Point, c.After, c.Baseline)
		}
		var want int
		switch {
		case c.Point.Axis == axisPods:
			want = max(c.Point.N, realPods)
		case c.Point.Axis == axisRules:
			want = c.Point.N + len(fixedInboundExcludes)
		case c.Point.Unmapped:
			want = c.Baseline
			if c.HelperSockets != c.Point.N || c.HelperInserts != 0 {
				t.Errorf("control point: sockfill held %d sockets, %d in the map; want %d, 0", c.HelperSockets, c.HelperInserts, c.Point.N)
			}
		default:
			want = c.Baseline + c.Point.N
		}
		if c.Want != want {
			t.Errorf("%s %s: asked the map to hold %d, want %d", c.Point.Axis, c.Point, c.Want, want)
		}
	}
	for _, axis := range res.Settings.points() {
		for _, p := range axis {
			if !checked[p] {
				t.Errorf("%s %s: never set up", p.Axis, p)
			}
			for _, m := range scaleMetrics {
				if res.stat(p, m.key).n == 0 {
					t.Errorf("%s %s: no %s", p.Axis, p, m.key)
				}
			}
		}
	}
}

// TestScaleRules checks the rules the scaling benchmark puts on its client
// pod: exactly as many as asked, within the policy's caps, none of them
// changing whether the targets are captured, and the IPv4 ranges close to
// the targets so that their lookup walks deep into the trie.
func TestScaleRules(t *testing.T) {
	targets := []netip.Addr{netip.MustParseAddr("10.250.0.1"), netip.MustParseAddr("10.250.0.41")}
	dial := []uint16{8080, 8081, 15001, 15006}
	for _, tc := range []struct {
		n   int
		far bool
	}{{0, false}, {2, false}, {20, false}, {100, false}, {300, false}, {maxScaleRules, false}, {100, true}, {maxScaleRules, true}} {
		n := tc.n
		out, in, err := scaleRules(n, targets, dial, tc.far)
		if err != nil {
			t.Fatalf("%d rules: %v", n, err)
		}
		p := policy.Pod{Outbound: out, Inbound: in}
		if got := ruleCount(p) - len(fixedInboundExcludes); got != n {
			t.Errorf("%d rules: got %d", n, got)
		}
		if n == 0 {
			if !out.AllIPs || ruleCount(p) != len(fixedInboundExcludes) {
				t.Errorf("0 rules: want the default policy, got %+v %+v", out, in)
			}
			continue
		}
		if out.AllIPs {
			t.Errorf("%d rules: every destination captured, so the include ranges are never looked up", n)
		}
		for _, l := range [][]uint16{out.ExcludePorts, out.IncludePorts, in.ExcludePorts, in.IncludePorts} {
			if len(l) > policy.MaxPorts {
				t.Errorf("%d rules: %d ports in a list", n, len(l))
			}
			for _, port := range dial {
				if slices.Contains(l, port) {
					t.Errorf("%d rules: dialled port %d in a port list", n, port)
				}
			}
			if len(slices.Compact(slices.Clone(l))) != len(l) {
				t.Errorf("%d rules: duplicate ports in %v", n, l)
			}
		}
		for _, f := range fixedInboundExcludes {
			if !slices.Contains(in.ExcludePorts, f) {
				t.Errorf("%d rules: fixed inbound exclude %d missing", n, f)
			}
		}
		for _, l := range [][]netip.Prefix{out.ExcludeCIDRs, out.IncludeCIDRs, out.ExcludeCIDRsV6, out.IncludeCIDRsV6} {
			if len(l) > policy.MaxCIDRs {
				t.Errorf("%d rules: %d ranges in a list", n, len(l))
			}
			seen := map[netip.Prefix]bool{}
			for _, pfx := range l {
				if pfx != pfx.Masked() || seen[pfx] {
					t.Errorf("%d rules: range %s unmasked or twice", n, pfx)
				}
				seen[pfx] = true
			}
		}
		for _, a := range targets {
			for _, pfx := range out.ExcludeCIDRs {
				if pfx.Contains(a) {
					t.Errorf("%d rules: exclude range %s contains target %s", n, pfx, a)
				}
			}
			if !slices.ContainsFunc(out.IncludeCIDRs, func(pfx netip.Prefix) bool { return pfx.Contains(a) }) {
				t.Errorf("%d rules: target %s in no include range", n, a)
			}
		}
		if tc.far {
			far := netip.MustParsePrefix("172.16.0.0/12")
			for _, pfx := range append(slices.Clone(out.ExcludeCIDRs), out.IncludeCIDRs...) {
				if !far.Contains(pfx.Addr()) && !slices.Contains(targets, pfx.Addr()) {
					t.Errorf("%d rules far away: range %s near the targets", n, pfx)
				}
			}
		}
		if n >= 100 && !tc.far {
			// Half the IPv4 tries' entries at least share 24 bits or
			// more with a target: the lookup walks past them.
			deep := 0
			for _, pfx := range append(slices.Clone(out.ExcludeCIDRs), out.IncludeCIDRs...) {
				if pfx.Bits() > 24 {
					deep++
				}
			}
			if total := len(out.ExcludeCIDRs) + len(out.IncludeCIDRs); deep*2 < total {
				t.Errorf("%d rules: %d of %d IPv4 ranges longer than /24", n, deep, total)
			}
		}
	}
	if _, _, err := scaleRules(maxScaleRules+1, targets, dial, false); err == nil {
		t.Errorf("%d rules accepted: more than every list full", maxScaleRules+1)
	}
	if _, _, err := scaleRules(1, targets, dial, false); err == nil {
		t.Errorf("1 rule accepted: the include ranges cannot hold both targets")
	}
}
