package main

import (
	"fmt"
	"os/exec"
	"strings"

	"github.com/sockbridge/sockbridge/internal/testutil"
)

// istioNatRules is the IPv4 nat table istio-iptables hands to
// `iptables-restore --noflush` for the sidecar injector's defaults
//
//	istio-iptables -p 15001 -z 15006 -u 1337 -g 1337 -m REDIRECT \
//	    -i '*' -x "" -b '*' -d 15090,15021,15020
//
// in Istio's own order (compare tools/istio-iptables/pkg/capture/testdata/
// inbound-wildcard-exclude.golden and kube-virt-interfaces.golden in
// istio/istio): inbound TCP except the tunnel and the excluded ports goes
// to 15006; outbound TCP goes to 15001 except the proxy's own (uid or gid
// 1337), the inbound passthrough from 127.0.0.6, and explicit loopback; the
// proxy's loopback calls to a local non-127.0.0.1 address go to 15006.
func istioNatRules() string {
	const (
		outbound = 15001
		inbound  = 15006
		tunnel   = 15008
		uid      = proxyUID
		gid      = proxyUID
		exclude  = "15090,15021,15020"
	)
	lines := []string{
		"* nat",
		"-N ISTIO_INBOUND",
		"-N ISTIO_REDIRECT",
		"-N ISTIO_IN_REDIRECT",
		"-N ISTIO_OUTPUT",
		fmt.Sprintf("-A ISTIO_INBOUND -p tcp --dport %d -j RETURN", tunnel),
		fmt.Sprintf("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports %d", outbound),
		fmt.Sprintf("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports %d", inbound),
		"-A PREROUTING -p tcp -j ISTIO_INBOUND",
		fmt.Sprintf("-A ISTIO_INBOUND -p tcp -m multiport --dports %s -j RETURN", exclude),
		"-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
		"-A OUTPUT -j ISTIO_OUTPUT",
		"-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
	}
	for _, owner := range []string{fmt.Sprintf("--uid-owner %d", uid), fmt.Sprintf("--gid-owner %d", gid)} {
		lines = append(lines,
			fmt.Sprintf("-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport %d -m owner %s -j ISTIO_IN_REDIRECT", tunnel, owner),
			fmt.Sprintf("-A ISTIO_OUTPUT -o lo -m owner ! %s -j RETURN", owner),
			fmt.Sprintf("-A ISTIO_OUTPUT -m owner %s -j RETURN", owner),
		)
	}
	lines = append(lines,
		"-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
		"-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
		"COMMIT",
	)
	return strings.Join(lines, "\n") + "\n"
}

// applyIstioRules loads the rules into ns with iptables-restore run inside
// ns, never in the host's namespace, and returns the nat table as
// iptables-save then shows it.
func applyIstioRules(t testutil.TB, ns *testutil.Netns) string {
	t.Helper()
	if !strings.HasPrefix(ns.Name, netnsPrefix) {
		t.Fatalf("refusing to load iptables rules into namespace %q, which the benchmark did not create", ns.Name)
	}
	cmd := exec.Command("nsenter", "--net="+ns.Path(), "--", "iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(istioNatRules())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-restore in %s: %v\n%s", ns.Name, err, out)
	}
	return ns.Exec(t, "iptables-save", "-t", "nat")
}
