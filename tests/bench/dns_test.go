package main

import (
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
)

// TestDNSBenchSmoke runs the DNS row's smoke mode: one short round per
// variant, checking only that every query was answered through the DNS
// proxy (a query that is not captured goes nowhere and fails). No timing
// is asserted.
func TestDNSBenchSmoke(t *testing.T) {
	testutil.RequirePrivileged(t, "go", "dnsmasq", "iptables-restore", "iptables-save", "conntrack", "ss")
	s := defaultSettings().smoke()
	s.Out = t.TempDir()
	res := runDNSBench(t, s)
	if err := res.writeFiles(s.Out); err != nil {
		t.Errorf("write results: %v", err)
	}
	logSection(t, res.markdown(), res.Failures)
	for _, v := range dnsVariants {
		n := 0
		for _, smp := range res.Samples {
			if smp.Variant == v {
				n++
			}
		}
		if n != 1 {
			t.Errorf("variant %s: %d samples, want 1", v, n)
		}
	}
	if res.Captured == 0 {
		t.Errorf("sockbridge's dns_connected counter is 0: the sockbridge variant's queries were not captured")
	}
}
