package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Flow is one socket that carries sockbridge state.
type Flow struct {
	// OrigDst is the destination the app dialled.
	OrigDst netip.AddrPort `json:"orig_dst"`
	// Role: "app" (captured connect), "shortcut" (sidecar to a local
	// pod's inbound port), "sidecar" (accepted by the sidecar) or
	// "passthrough" (either end of the sidecar's inbound passthrough).
	Role string `json:"role"`
}

// LiveSockets counts the sockets that carry sockbridge state. The kernel
// frees that state with the socket, so it is 0 once captured connections
// have closed.
func (dp *Datapath) LiveSockets() (int, error) {
	flows, err := dp.Flows()
	return len(flows), err
}

// Flows lists the sockets that carry sockbridge state, through the
// iter/bpf_sk_storage_map program (kernel 5.9).
func (dp *Datapath) Flows() ([]Flow, error) {
	if dp.iter == nil {
		return nil, fmt.Errorf("flow iterator not loaded (needs kernel 5.9)")
	}
	return readFlows(dp.iter, dp.maps.SbSocks)
}

func readFlows(prog *ebpf.Program, socks *ebpf.Map) ([]Flow, error) {
	it, err := link.AttachIter(link.IterOptions{Program: prog, Map: socks})
	if err != nil {
		return nil, fmt.Errorf("attach flow iterator: %w", err)
	}
	defer it.Close()
	r, err := it.Open()
	if err != nil {
		return nil, fmt.Errorf("open flow iterator: %w", err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read flow iterator: %w", err)
	}
	var (
		rec   connectSbSock
		flows []Flow
	)
	size := binary.Size(rec)
	if len(data)%size != 0 {
		return nil, fmt.Errorf("flow iterator returned %d bytes, not a multiple of %d", len(data), size)
	}
	for off := 0; off < len(data); off += size {
		if err := binary.Read(bytes.NewReader(data[off:off+size]), binary.LittleEndian, &rec); err != nil {
			return nil, fmt.Errorf("decode flow: %w", err)
		}
		flows = append(flows, Flow{
			OrigDst: netip.AddrPortFrom(netToIP4(rec.Ip4), ntohs(rec.Port)),
			Role:    flowRole(rec.Flags),
		})
	}
	return flows, nil
}

func flowRole(flags uint16) string {
	switch {
	case flags&uint16(connectSbSockFlagSB_SOCK_CAPTURED) != 0:
		return "app"
	case flags&uint16(connectSbSockFlagSB_SOCK_SHORTCUT) != 0:
		return "shortcut"
	case flags&uint16(connectSbSockFlagSB_SOCK_ORIGDST) != 0:
		return "sidecar"
	case flags&uint16(connectSbSockFlagSB_SOCK_PASSTHROUGH) != 0:
		return "passthrough"
	}
	return fmt.Sprintf("flags=%#x", flags)
}
