#!/usr/bin/env bash
# Installs the Debian packages sockbridge's build, tests, demo and benchmark
# use. Idempotent; run as root.
set -euo pipefail
packages=(
	clang-19 llvm-19 clang-format-19 libbpf-dev # make generate, make lint
	bpftool                                     # tests check what is attached
	iproute2 util-linux procps                  # ip netns, nsenter, sysctl
	haproxy                                     # the sidecar stand-in
	shadowsocks-libev                           # the IPv6 sidecar stand-in (ss-redir reads SOL_IPV6 SO_ORIGINAL_DST)
	iptables conntrack                          # the iptables baseline, conntrack counts
	dnsmasq-base bind9-dnsutils                 # DNS capture tests: DNS proxy and cluster DNS stand-ins, dig
	etcd-server                                 # the controller's end-to-end tests
	linux-perf                                  # benchmark profiling
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
