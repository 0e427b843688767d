#!/bin/sh
# Shows, without sockbridge, why connect6 never connects a pod's global IPv6
# address to [::1] (docs/datapath.md, "Native IPv6"), which it did before
# and which made the IPv6 row's sockbridge variant lose a connection now and
# then (docs/benchmark.md, "Caveats"): a TCP connection from a pod's global
# IPv6 address to [::1]:15001 whose client closes first and whose sidecar
# end closes a moment later. The client's orphaned socket answers the sidecar's
# FIN from TIME-WAIT through the kernel's control socket; that reply to ::1
# is routed strictly by the interface the FIN came in on, which the kernel
# records as the device owning the pod address (not lo), so it has no route
# (Ip6OutNoRoutes) and the sidecar's socket stays in LAST-ACK, retransmitting.
# A later connection from the same port (tcp_tw_reuse) lands on it and times
# out. Controls: the same close between ::1 and ::1, and between the pod
# address and itself, leaves nothing behind; those are the two pairs
# connect6 makes now.
#
# Root only. Everything happens in a network namespace this script creates
# and deletes; no traffic leaves it. Usage: sh ipv6-lastack.sh
set -eu
ns="sbb-lastack-$$"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT INT TERM
pod=fd00:250::6:12
run() { # client source, sidecar listener
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	ip -n "$ns" link add eth0 type veth peer name peer0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" link set peer0 up
	ip -n "$ns" -6 addr add "$pod/64" dev eth0 nodad
	echo "== client [$1]:40000 -> sidecar [$2]:15001"
	nsenter --net="/run/netns/$ns" -- python3 - "$1" "$2" <<'EOF'
import socket, subprocess, sys, time
src, dst = sys.argv[1], sys.argv[2]
l = socket.socket(socket.AF_INET6)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((dst, 15001)); l.listen()
c = socket.socket(socket.AF_INET6)
c.bind((src, 40000)); c.connect((dst, 15001))
s, _ = l.accept()
c.close(); time.sleep(0.1); s.close(); time.sleep(1.5)
out = subprocess.run(["ss", "-Htan", "state", "last-ack"], capture_output=True, text=True).stdout.strip()
print("LAST-ACK sockets:", out or "none")
print(subprocess.run(["nstat", "-asz", "Ip6OutNoRoutes"], capture_output=True, text=True).stdout.split("\n")[1])
EOF
	ip netns del "$ns"
}
run "$pod" ::1
run ::1 ::1
run "$pod" "$pod"
