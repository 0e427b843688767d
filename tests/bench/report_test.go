package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Unit tests of the benchmark's pure parts; they need no privileges.

func TestIstioNatRulesOrder(t *testing.T) {
	rules := istioNatRules()
	// The lines that make the capture what Istio's is, in Istio's order.
	want := []string{
		"* nat",
		"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
		"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
		"-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN",
		"-A OUTPUT -j ISTIO_OUTPUT",
		"-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
		"-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
		"-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
		"-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
		"-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
		"-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
		"COMMIT",
	}
	rest := rules
	for _, line := range want {
		i := strings.Index(rest, line+"\n")
		if i < 0 {
			t.Fatalf("rules lack %q after the previous line:\n%s", line, rules)
		}
		rest = rest[i+len(line):]
	}
}

func TestExplicitConfigKeepsSidecarSettings(t *testing.T) {
	sidecar := "global\n    maxconn 2000\n\ndefaults\n    mode tcp\n\nlisten outbound\n    bind 127.0.0.1:15001\n"
	cfg := explicitConfig(sidecar)
	if !strings.HasPrefix(cfg, "global\n    maxconn 2000\n\ndefaults\n    mode tcp\n") {
		t.Errorf("global and defaults not kept:\n%s", cfg)
	}
	if strings.Contains(cfg, "listen outbound") {
		t.Errorf("the capture listeners must not be copied:\n%s", cfg)
	}
	for _, want := range []string{"bind 127.0.0.1:15080", "server upstream 10.250.0.1:8080", "bind 127.0.0.1:15081", "server upstream 10.250.0.1:8081"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
}

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in               []float64
		median, min, max float64
	}{
		{[]float64{3}, 3, 3, 3},
		{[]float64{5, 1, 3}, 3, 1, 5},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4},
	} {
		s := summarize(tc.in)
		if s.median != tc.median || s.min != tc.min || s.max != tc.max || s.n != len(tc.in) {
			t.Errorf("summarize(%v) = %+v", tc.in, s)
		}
	}
}

func TestCostIsPositiveWhenWorse(t *testing.T) {
	lat, _ := metricByKey("pingpong64_p50_us")
	rate, _ := metricByKey("conn_per_s")
	for _, tc := range []struct {
		m      metric
		v, ref float64
		want   float64
	}{
		{lat, 110, 100, 10},  // 10% more latency
		{lat, 90, 100, -10},  // less latency
		{rate, 50, 100, 100}, // half the rate: twice the time per connection
		{rate, 200, 100, -50},
	} {
		got, ok := cost(tc.m, tc.v, tc.ref)
		if !ok || got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("cost(%s, %v, %v) = %v, want %v", tc.m.key, tc.v, tc.ref, got, tc.want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	s, err := parseFlags([]string{"-rounds", "5", "-variants", "3,4,3", "-bulk-mib", "64"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Rounds != 5 || s.BulkBytes != 64<<20 || len(s.Variants) != 2 || s.Variants[0] != iptables {
		t.Errorf("parsed %+v", s)
	}
	if s, _ := parseFlags([]string{"-smoke", "-rounds", "7"}); !s.Smoke || s.Rounds != 1 {
		t.Errorf("-smoke must run one round: %+v", s)
	}
	for _, bad := range [][]string{{"-variants", "6"}, {"-rounds", "0"}, {"-conns-parallel", "0"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%v) accepted", bad)
		}
	}
}

// costResults is a run of three rounds whose cost figures are known.
func costResults() *results {
	r := &results{Settings: defaultSettings()}
	for _, id := range []int{direct, explicit, iptables, sockbridge, splice} {
		r.Variants = append(r.Variants, variantInfo{ID: id, Name: variantNames[id]})
	}
	add := func(variant int, key string, values ...float64) {
		for i, x := range values {
			r.Samples = append(r.Samples, sample{Round: i + 1, Variant: variant, Metric: key, Value: x})
		}
	}
	add(explicit, "conn_cpu_ms_per_1k", 400, 500, 600)
	add(iptables, "conn_cpu_ms_per_1k", 900, 1000, 1100)
	add(sockbridge, "conn_cpu_ms_per_1k", 450, 500, 550)
	add(sockbridge, "bpf_ns_per_conn", 1900, 2000, 2100)
	add(splice, "bpf_ns_per_conn", 1400, 1500, 1600)
	add(sockbridge, "mesh64_p50_us", 100, 100, 100)
	add(splice, "mesh64_p50_us", 80, 80, 80)
	add(splice, "mesh64_skmsg_ns_per_msg", 140, 150, 160)
	add(splice, "mesh16k_skmsg_ns_per_msg", 300, 310, 320)
	for round, ns := range []uint64{1000, 1200, 1100} {
		// 100 connections: connect4 twice each, sockops 17 times.
		r.Cost = append(r.Cost,
			progCost{Round: round + 1, Variant: sockbridge, Workload: "conns", Program: "connect4_redirect", Calls: 200, RuntimeNs: 200 * ns, Units: 100},
			progCost{Round: round + 1, Variant: sockbridge, Workload: "conns", Program: "sockops_track", Calls: 1700, RuntimeNs: 1700 * 200, Units: 100},
			progCost{Round: round + 1, Variant: splice, Workload: "mesh64", Program: "skmsg_splice", Calls: 2000, RuntimeNs: 2000 * 150, Units: 1000},
			// The run's one connection: too rare to list per request.
			progCost{Round: round + 1, Variant: splice, Workload: "mesh64", Program: "connect4_redirect", Calls: 2, RuntimeNs: 2 * 2000, Units: 1000},
		)
	}
	return r
}

func TestBreakdown(t *testing.T) {
	r := costResults()
	rows := r.breakdown("conns")
	if len(rows) != 2 {
		t.Fatalf("want 2 programs, got %+v", rows)
	}
	// Largest cost per connection first: sockops 17 × 200 = 3400 ns over
	// connect4's 2 × 1100.
	sockops, connect := rows[0], rows[1]
	if sockops.Program != "sockops_track" || connect.Program != "connect4_redirect" {
		t.Fatalf("order: %s, %s", sockops.Program, connect.Program)
	}
	for _, tc := range []struct {
		name      string
		got       stat
		median    float64
		min, max  float64
		wantRound int
	}{
		{"sockops calls per connection", sockops.PerUnit, 17, 17, 17, 3},
		{"sockops ns per connection", sockops.NsUnit, 3400, 3400, 3400, 3},
		{"connect4 calls per connection", connect.PerUnit, 2, 2, 2, 3},
		{"connect4 ns per call", connect.NsCall, 1100, 1000, 1200, 3},
		{"connect4 ns per connection", connect.NsUnit, 2200, 2000, 2400, 3},
	} {
		if tc.got.median != tc.median || tc.got.min != tc.min || tc.got.max != tc.max || tc.got.n != tc.wantRound {
			t.Errorf("%s = %+v, want median %v (%v–%v) over %d rounds", tc.name, tc.got, tc.median, tc.min, tc.max, tc.wantRound)
		}
	}
	if mesh := r.breakdown("mesh64"); len(mesh) != 2 || mesh[0].PerUnit.median != 2 || mesh[0].NsCall.median != 150 {
		t.Errorf("mesh64 breakdown = %+v", mesh)
	}
}

func TestCostSection(t *testing.T) {
	r := costResults()
	var b strings.Builder
	r.writeCost(&b, r.summary())
	md := b.String()
	for _, want := range []string{
		"- variant 4 (sockbridge): **2000 ns** (1900–2100) per connection (target ≤ 1500 ns: missed)",
		"- variant 5 (sockbridge + splice): **1500 ns** (1400–1600) per connection (target ≤ 1500 ns: met)",
		"| 4 sockbridge | sockops_track | 17.0 | 200 | 3400 |",
		"| 4 sockbridge | connect4_redirect | 2.00 | 1100 (1000–1200) | 2200 (2000–2400) |",
		// CPU per 1000 connections: 500 / 1000 against iptables, 500 / 500
		// against the explicit proxy; BPF 2000 ns × 1000 = 2 ms.
		"| 4 sockbridge | 500 (450–550) | 0.50× | 1.00× | 2.00 | – |",
		"| 3 iptables (Istio) | 1000 (900–1100) | 1.00× | 2.00× | – | – |",
		"| 64 B req/resp p50, sidecar to sidecar | µs | 100 | 80.0 | 0.80× |",
		"- sk_msg per spliced message, 64 B req/resp: **150 ns** (140–160) (target ≤ 150 ns: met)",
		"- sk_msg per spliced message, 16 KiB req/resp: **310 ns** (300–320) (target ≤ 150 ns: missed)",
		"| mesh64 | 5 sockbridge + splice | skmsg_splice | 2.00 | 150 | 300 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("cost section lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "| mesh64 | 5 sockbridge + splice | connect4_redirect |") {
		t.Errorf("a program that ran twice in 1000 requests is listed per request:\n%s", md)
	}
	// Variant 1 has no CPU sample: no row rather than a made-up one.
	if strings.Contains(md, "| 1 direct |") {
		t.Errorf("a row for a variant without samples:\n%s", md)
	}
}

func TestCostCSV(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cost.csv")
	if err := costResults().writeCostCSV(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 13 {
		t.Fatalf("want a header and 12 rows, got %d lines:\n%s", len(lines), b)
	}
	if want := "1,4,conns,connect4_redirect,200,200000,100,connections,2.00,1000.00,2000.00"; lines[1] != want {
		t.Errorf("row 1 = %q, want %q", lines[1], want)
	}
}
