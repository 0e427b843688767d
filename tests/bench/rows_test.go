package main

import (
	"testing"

	"github.com/sockbridge/sockbridge/internal/testutil"
)

// TestIPv6RowSmoke runs the IPv6 row's smoke mode: one short round per
// variant, checking that every connection moved its bytes intact through
// the shadowsocks sidecar (ss-server dialled the original destination
// once per connection, and for sockbridge connect6 captured it), and that
// the ip6tables variant's conntrack count is a measurement (it sees the
// entries its NAT needs) while sockbridge's is 0. No timing is asserted.
func TestIPv6RowSmoke(t *testing.T) {
	testutil.RequirePrivileged(t, append([]string{"go"}, rowTools(settings{IPv6: true})...)...)
	checkRowSmoke(t, runIPv6Bench, "captured_v6")
}

// TestInboundRowSmoke is TestIPv6RowSmoke for the inbound row: the
// server pod's app must see every connection from 127.0.0.6, HAProxy's
// inbound passthrough, and for sockbridge sk_lookup must have handed each
// one to the sidecar.
func TestInboundRowSmoke(t *testing.T) {
	testutil.RequirePrivileged(t, append([]string{"go", "haproxy", "iptables-restore", "iptables-save", "conntrack", "ss"}, rowTools(settings{Inbound: true})...)...)
	checkRowSmoke(t, runInboundBench, "inbound_redirected")
}

func checkRowSmoke(t *testing.T, run func(testutil.TB, settings) *rowResults, counter string) {
	t.Helper()
	s := defaultSettings().smoke()
	s.Out = t.TempDir()
	res := run(t, s)
	if err := res.writeFiles(s.Out); err != nil {
		t.Errorf("write results: %v", err)
	}
	logSection(t, res.markdown(), res.Failures)
	for _, v := range res.Variants {
		for _, m := range rowMetrics {
			if n := len(res.values(v, m.key)); n != 1 {
				t.Errorf("%s, %s: %d samples, want 1", v, m.key, n)
			}
		}
	}
	if ct := res.values(res.Variants[0], "ct_per_conn"); len(ct) == 1 && ct[0] < 1 {
		t.Errorf("%s: %.2f conntrack entries per connection, want at least 1 (NAT needs them): the count measures nothing", res.Variants[0], ct[0])
	}
	if ct := res.values(res.Variants[1], "ct_per_conn"); len(ct) == 1 && ct[0] != 0 {
		t.Errorf("%s: %.2f conntrack entries per connection, want 0", res.Variants[1], ct[0])
	}
	if res.Counters[counter] == 0 {
		t.Errorf("sockbridge's %s counter is 0: the sockbridge variant's connections were not captured", counter)
	}
}
