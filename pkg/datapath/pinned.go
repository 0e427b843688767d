package datapath

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Snapshot is what the pinned maps hold, for `sockbridge maps`.
type Snapshot struct {
	Pods     []Pod             `json:"pods"`
	Stats    map[string]uint64 `json:"stats"`
	InFlight int               `json:"in_flight_handshakes"`
	// Spliced counts the sockets in the sockhash (two per spliced flow).
	Spliced int `json:"spliced_sockets"`
	// Flows lists the sockets that carry sockbridge state.
	Flows []Flow `json:"flows"`
}

// ReadPinned reads the maps an agent pinned in pinDir without loading any
// program.
func ReadPinned(pinDir string) (*Snapshot, error) {
	var (
		dp   Datapath
		errs []error
	)
	open := func(name string) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			errs = append(errs, fmt.Errorf("open pinned map %s (is the agent installed?): %w", name, err))
		}
		return m
	}
	dp.maps.SbPods = open("sb_pods")
	dp.maps.SbStats = open("sb_stats")
	dp.maps.SbTuples = open("sb_tuples")
	dp.maps.SbPorts = open("sb_ports")
	dp.maps.SbCidrExcl = open("sb_cidr_excl")
	dp.maps.SbCidrIncl = open("sb_cidr_incl")
	dp.maps.SbSockhash = open("sb_sockhash")
	dp.maps.SbSocks = open("sb_socks")
	defer func() {
		for _, m := range []*ebpf.Map{dp.maps.SbPods, dp.maps.SbStats, dp.maps.SbTuples, dp.maps.SbPorts,
			dp.maps.SbCidrExcl, dp.maps.SbCidrIncl, dp.maps.SbSockhash, dp.maps.SbSocks} {
			if m != nil {
				m.Close()
			}
		}
	}()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var (
		s   Snapshot
		err error
	)
	if s.Pods, err = dp.Pods(); err != nil {
		return nil, err
	}
	if s.Stats, err = dp.Stats(); err != nil {
		return nil, err
	}
	if s.InFlight, err = dp.InFlightTuples(); err != nil {
		return nil, err
	}
	if s.Spliced, err = dp.SplicedSockets(); err != nil {
		return nil, err
	}
	if s.Flows, err = pinnedFlows(dp.maps.SbSocks); err != nil {
		return nil, err
	}
	return &s, nil
}

// pinnedFlows loads the flow iterator against the pinned socket storage.
func pinnedFlows(socks *ebpf.Map) ([]Flow, error) {
	spec, err := loadIter()
	if err != nil {
		return nil, fmt.Errorf("load iter spec: %w", err)
	}
	var objs iterObjects
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"sb_socks": socks}}
	if err := spec.LoadAndAssign(&objs.iterPrograms, opts); err != nil {
		return nil, fmt.Errorf("load flow iterator: %w", err)
	}
	defer objs.iterPrograms.Close()
	return readFlows(objs.IterSocks, socks)
}
