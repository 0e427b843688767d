package testutil

import (
	"fmt"
	"net/netip"
	"os/exec"
)

// Netns is a named network namespace created with `ip netns add`.
type Netns struct {
	Name string
	// Addr is the namespace's first address on the test network, if any;
	// Addrs all of them (an IPv4 and an IPv6 address for a dual-stack
	// host).
	Addr  netip.Addr
	Addrs []netip.Addr
}

// Path is the namespace's bind mount, for nsenter --net.
func (n *Netns) Path() string { return "/run/netns/" + n.Name }

// NewNetns creates a network namespace with loopback up and removes it at
// cleanup.
func NewNetns(t TB, name string) *Netns {
	t.Helper()
	Run(t, "ip", "netns", "add", name)
	trackNetns(name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	n := &Netns{Name: name}
	n.Exec(t, "ip", "link", "set", "lo", "up")
	return n
}

// Exec runs a command inside the namespace (through nsenter, which keeps
// /sys as it is, unlike `ip netns exec`) and returns its output.
func (n *Netns) Exec(t TB, name string, args ...string) string {
	t.Helper()
	return Run(t, "nsenter", append([]string{"--net=" + n.Path(), "--", name}, args...)...)
}

// Sysctl sets a per-namespace sysctl, e.g. "net.ipv4.tcp_tw_reuse", "1".
func (n *Netns) Sysctl(t TB, key, value string) {
	t.Helper()
	n.Exec(t, "sysctl", "-q", "-w", key+"="+value)
}

// Network is a private L2 segment: a "node" namespace holding a bridge that
// every host namespace joins with a veth pair. The host's own namespace is
// never touched.
type Network struct {
	t      TB
	prefix string
	node   *Netns
	bits   int
	n      int
}

// NewNetwork creates the bridge namespace. Hosts get addresses from subnet,
// which must lie in 10.250.0.0/16.
func NewNetwork(t TB, prefix string, subnet netip.Prefix) *Network {
	t.Helper()
	if !netip.MustParsePrefix("10.250.0.0/16").Contains(subnet.Addr()) {
		t.Fatalf("test network %s is outside 10.250.0.0/16", subnet)
	}
	node := NewNetns(t, prefix+"-node")
	node.Exec(t, "ip", "link", "add", "br0", "type", "bridge")
	node.Exec(t, "ip", "link", "set", "br0", "up")
	return &Network{t: t, prefix: prefix, node: node, bits: subnet.Bits()}
}

// TestNet6 is the IPv6 range of the test networks: a unique local
// prefix, only ever configured inside namespaces the tests create.
var TestNet6 = netip.MustParsePrefix("fd00:250::/64")

// AddHost creates namespace <prefix>-<name> with the given addresses on the
// network: IPv4 ones in the network's subnet, IPv6 ones in TestNet6 (added
// without duplicate address detection, so they are usable at once). The
// veth pair lives and dies with the two namespaces.
func (nw *Network) AddHost(name string, addrs ...netip.Addr) *Netns {
	nw.t.Helper()
	nw.n++
	ns := NewNetns(nw.t, nw.prefix+"-"+name)
	if len(addrs) > 0 {
		ns.Addr = addrs[0]
	}
	ns.Addrs = addrs
	peer := fmt.Sprintf("h%d", nw.n)
	// Created inside the node namespace, then one end moved into the host.
	nw.node.Exec(nw.t, "ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
	nw.node.Exec(nw.t, "ip", "link", "set", peer, "master", "br0", "up")
	for _, addr := range addrs {
		if addr.Is4() {
			ns.Exec(nw.t, "ip", "addr", "add", fmt.Sprintf("%s/%d", addr, nw.bits), "dev", "eth0")
			continue
		}
		if !TestNet6.Contains(addr) {
			nw.t.Fatalf("test address %s is outside %s", addr, TestNet6)
		}
		ns.Exec(nw.t, "ip", "-6", "addr", "add", fmt.Sprintf("%s/%d", addr, TestNet6.Bits()), "dev", "eth0", "nodad")
	}
	ns.Exec(nw.t, "ip", "link", "set", "eth0", "up")
	return ns
}

// AddLocalAddr adds addr (e.g. ::6, Envoy's IPv6 inbound passthrough
// source, which istio-iptables' setup adds) to the namespace's loopback.
func (n *Netns) AddLocalAddr(t TB, addr netip.Addr) {
	t.Helper()
	if addr.Is4() {
		n.Exec(t, "ip", "addr", "add", addr.String()+"/32", "dev", "lo")
		return
	}
	n.Exec(t, "ip", "-6", "addr", "add", addr.String()+"/128", "dev", "lo", "nodad")
}

// Node gives the network's bridge namespace an address on the network and
// returns it: a client there is "the node itself" (the host's own
// namespace in a cluster), without touching this machine's.
func (nw *Network) Node(addr netip.Addr) *Netns {
	nw.t.Helper()
	nw.node.Exec(nw.t, "ip", "addr", "add", fmt.Sprintf("%s/%d", addr, nw.bits), "dev", "br0")
	nw.node.Addr, nw.node.Addrs = addr, []netip.Addr{addr}
	return nw.node
}

// Prefix is the name prefix of every namespace of the network.
func (nw *Network) Prefix() string { return nw.prefix }
