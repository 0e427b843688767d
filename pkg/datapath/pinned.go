package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/sockbridge/sockbridge/pkg/bpfobj"
)

// Snapshot is what the pinned maps hold, for `sockbridge maps`. A part that
// cannot be read is left empty and named in Unavailable with the reason;
// the rest is still there.
type Snapshot struct {
	Pods     []Pod         `json:"pods"`
	Stats    bpfobj.Values `json:"stats"`
	InFlight int           `json:"in_flight_handshakes"`
	// Spliced counts the sockets in the sockhash (two per spliced flow).
	Spliced int `json:"spliced_sockets"`
	// Flows lists the sockets that carry sockbridge state.
	Flows []Flow `json:"flows"`
	// Maps lists the datapath's pinned maps found in the pin directory.
	Maps []string `json:"maps"`
	// Unavailable names each part of the snapshot that could not be read,
	// with the reason ("flows": "sock_diag: ..."). Empty when complete.
	Unavailable map[string]string `json:"unavailable,omitempty"`
}

// ReadPinned reads the maps an agent of this layout pinned in pinDir
// (MapDir) without loading any program. It walks the datapath object's
// pinned maps, so a new map is read without a change here. It fails as a
// whole only when nothing is pinned there; otherwise every part it cannot
// read is named in Snapshot.Unavailable.
func ReadPinned(pinDir string) (*Snapshot, error) {
	mapDir := MapDir(pinDir)
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	s := &Snapshot{Pods: []Pod{}, Flows: []Flow{}, Unavailable: map[string]string{}}
	opened := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range opened {
			m.Close()
		}
	}()
	names := make([]string, 0, len(spec.Maps))
	for name, ms := range spec.Maps {
		if ms.Pinning == ebpf.PinByName {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		m, err := ebpf.LoadPinnedMap(filepath.Join(mapDir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		switch {
		case err == nil:
			opened[name] = m
			s.Maps = append(s.Maps, name)
		case errors.Is(err, os.ErrNotExist) && (name == datapathMapSbSockhash || name == datapathMapSbListeners):
			// Not created when the agent runs without splicing or
			// without inbound capture.
		case errors.Is(err, os.ErrNotExist):
			s.Unavailable["map "+name] = "not pinned in " + mapDir
		default:
			s.Unavailable["map "+name] = err.Error()
		}
	}
	if len(opened) == 0 {
		return nil, fmt.Errorf("no sockbridge map of pinned layout v%d in %s (is an agent of this version installed?)", LayoutVersion, mapDir)
	}
	var dp Datapath
	assignMaps(opened, &dp.maps)
	if dp.counters, err = bpfobj.CountersOf(spec, "sb_stat", "SB_STAT_"); err != nil {
		return nil, err
	}
	part := func(name string, read func() error, need ...*ebpf.Map) {
		if slices.Contains(need, nil) {
			s.Unavailable[name] = "a map it is read from is not pinned (see the map entries)"
			return
		}
		if err := read(); err != nil {
			s.Unavailable[name] = err.Error()
		}
	}
	m := &dp.maps
	part("pods", func() (err error) { s.Pods, err = dp.Pods(); return }, m.SbPods, m.SbPorts, m.SbCidrExcl, m.SbCidrIncl)
	part("stats", func() (err error) { s.Stats, err = dp.Stats(); return }, m.SbStats)
	part("in_flight_handshakes", func() (err error) { s.InFlight, err = dp.InFlightTuples(); return }, m.SbTuples)
	if m.SbSockhash != nil {
		part("spliced_sockets", func() (err error) { s.Spliced, err = dp.SplicedSockets(); return }, m.SbSockhash)
	}
	part("flows", func() error {
		flows, err := dp.Flows()
		s.Flows = append(s.Flows, flows...)
		return err
	}, m.SbSocks)
	if len(s.Unavailable) == 0 {
		s.Unavailable = nil
	}
	return s, nil
}
