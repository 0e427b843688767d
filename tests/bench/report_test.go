package main

import (
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
