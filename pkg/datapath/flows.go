package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/sockbridge/sockbridge/pkg/sockdiag"
)

// Flow is one socket that carries sockbridge state.
type Flow struct {
	// OrigDst is the destination the app dialled.
	OrigDst netip.AddrPort `json:"orig_dst"`
	// Role: "app" (captured connect, or a connected DNS socket),
	// "shortcut" (sidecar to a local pod's inbound port), "sidecar"
	// (accepted by the sidecar) or "dns" (an unconnected UDP socket whose
	// DNS went to the proxy).
	Role string `json:"role"`
	// Local and Remote are the socket's own addresses.
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
	// State is the TCP state ("ESTABLISHED", "CLOSE_WAIT" ...).
	State string `json:"state"`
	// Netns is the inode of the socket's network namespace
	// (/proc/PID/ns/net -> net:[Netns]); Cgroup its cgroup v2 id.
	Netns  uint64 `json:"netns"`
	Cgroup uint64 `json:"cgroup"`
}

// LiveSockets counts the sockets that carry sockbridge state. The kernel
// frees that state with the socket, so it is 0 once captured connections
// have closed.
func (dp *Datapath) LiveSockets() (int, error) {
	flows, err := dp.Flows()
	return len(flows), err
}

// Flows lists the sockets that carry sockbridge state (sb_socks), in every
// network namespace on the node, through sock_diag
// (INET_DIAG_REQ_SK_BPF_STORAGES). It needs no BPF program, so it works on
// kernels that refuse tracing programs.
//
// Kernel: 5.2; CAP_BPF or CAP_SYS_ADMIN, and CAP_SYS_ADMIN to enter the
// pods' network namespaces. With an error it still returns the flows of
// the namespaces it could read.
func (dp *Datapath) Flows() ([]Flow, error) {
	return listFlows(dp.maps.SbSocks)
}

func listFlows(socks *ebpf.Map) ([]Flow, error) {
	info, err := socks.Info()
	if err != nil {
		return nil, fmt.Errorf("list flows: map info of sb_socks: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return nil, fmt.Errorf("list flows: the kernel gives no id for sb_socks")
	}
	found, err := sockdiag.DumpAll([]int{socks.FD()}, sockdiag.Options{})
	var flows []Flow
	for _, s := range found {
		raw, ok := s.Storage[uint32(id)]
		if !ok {
			continue
		}
		var rec datapathSbSock
		if derr := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &rec); derr != nil {
			return flows, fmt.Errorf("list flows: decode sb_socks value of %d bytes: %w", len(raw), derr)
		}
		flows = append(flows, Flow{
			OrigDst: netip.AddrPortFrom(addrOf(rec.Addr), ntohs(rec.Port)),
			Role:    flowRole(rec.Flags),
			Local:   s.Local,
			Remote:  s.Remote,
			State:   s.State.String(),
			Netns:   s.NetnsInode,
			Cgroup:  s.CgroupID,
		})
	}
	if err != nil {
		return flows, fmt.Errorf("list flows through sock_diag: %w", err)
	}
	return flows, nil
}

func flowRole(flags uint16) string {
	switch {
	case flags&uint16(datapathSbSockFlagSB_SOCK_CAPTURED) != 0:
		return "app"
	case flags&uint16(datapathSbSockFlagSB_SOCK_SHORTCUT) != 0:
		return "shortcut"
	case flags&uint16(datapathSbSockFlagSB_SOCK_ORIGDST) != 0:
		return "sidecar"
	case flags&uint16(datapathSbSockFlagSB_SOCK_DNS) != 0:
		return "dns"
	}
	return fmt.Sprintf("flags=%#x", flags)
}
