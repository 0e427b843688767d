package probe

import (
	"bytes"
	_ "embed"
	"fmt"

	"github.com/cilium/ebpf"
)

// probeObject is bpf/probe.c compiled (gen.go).
//
//go:embed probe_bpfel.o
var probeObject []byte

// Names in bpf/probe.c; TestObjectNames checks them against the object.
const (
	progConnect4Rewrite    = "connect4_rewrite"
	progGetpeername4Answer = "getpeername4_answer"
	progGetsockoptAnswer   = "getsockopt_answer"
	progSockopsInsert      = "sockops_insert"
	progSkmsgRedirect      = "skmsg_redirect"

	mapStats = "sbp_stats"
	mapSocks = "sbp_socks"

	varConnectFromPort = "connect_from_port"
	varConnectToPort   = "connect_to_port"
	varSockoptOptname  = "sockopt_optname"
	varSockoptAnswer   = "sockopt_answer"
)

// loadProbeSpec parses the embedded object.
func loadProbeSpec() (*ebpf.CollectionSpec, error) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(probeObject))
	if err != nil {
		return nil, fmt.Errorf("parse the probe's BPF object: %w", err)
	}
	return spec, nil
}
