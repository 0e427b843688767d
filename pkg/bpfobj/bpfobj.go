// Package bpfobj holds what the datapath and the probe both do with a
// compiled BPF object before and after loading it: set its const volatile
// variables, drop the programs a plan does not use (and the maps only they
// use), report a load failure with the verifier's whole log, and read a
// per-CPU counter array whose indexes are a C enum, by the enum's names.
package bpfobj

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// SetVariables sets const volatile globals of spec before it loads; a name
// the object does not have is an error, never a silent no-op.
func SetVariables(spec *ebpf.CollectionSpec, vars map[string]any) error {
	for name, v := range vars {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("set variable %s: not in the BPF object", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set variable %s: %w", name, err)
		}
	}
	return nil
}

// Keep removes from spec every program not named in keep, then every map
// that no remaining program references (and the variables of a data
// section so removed), so that loading spec creates only what those
// programs use. Set variables before calling it. A name in keep that spec
// lacks is an error.
func Keep(spec *ebpf.CollectionSpec, keep []string) error {
	for _, name := range keep {
		if _, ok := spec.Programs[name]; !ok {
			return fmt.Errorf("keep program %s: not in the BPF object", name)
		}
	}
	for name := range spec.Programs {
		if !slices.Contains(keep, name) {
			delete(spec.Programs, name)
		}
	}
	used := map[string]bool{}
	for _, p := range spec.Programs {
		for _, ins := range p.Instructions {
			if ref := ins.Reference(); ref != "" && ins.IsLoadFromMap() {
				used[ref] = true
			}
		}
	}
	for name := range spec.Maps {
		if !used[name] {
			delete(spec.Maps, name)
		}
	}
	// Variables live in a data section's map; the kept programs do not
	// read those whose map went.
	for name, v := range spec.Variables {
		if _, ok := spec.Maps[v.SectionName]; !ok {
			delete(spec.Variables, name)
		}
	}
	return nil
}

// LoadError describes a failure to load a collection: a verifier error with
// its whole log (%+v), anything else wrapped.
func LoadError(what string, err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("load %s: %+v", what, ve)
	}
	return fmt.Errorf("load %s: %w", what, err)
}

// Counters names the slots of a per-CPU array of counters after the C enum
// that indexes it: enum sb_stat { SB_STAT_CAPTURED = 0, ..., SB_STAT_MAX }
// gives "captured" for slot 0. The names come from the object's BTF, so
// they cannot drift from the C.
type Counters struct {
	names []string // by index
}

// CountersOf reads enum enumName from spec's BTF. Each value's name loses
// prefix and is lowercased; the value named prefix+"MAX" is the array's
// size, not a counter.
func CountersOf(spec *ebpf.CollectionSpec, enumName, prefix string) (*Counters, error) {
	var e *btf.Enum
	if err := spec.Types.TypeByName(enumName, &e); err != nil {
		return nil, fmt.Errorf("counters: enum %s in the object's BTF: %w", enumName, err)
	}
	c := &Counters{}
	for _, v := range e.Values {
		if v.Name == prefix+"MAX" {
			continue
		}
		i := int(v.Value)
		for len(c.names) <= i {
			c.names = append(c.names, "")
		}
		c.names[i] = strings.ToLower(strings.TrimPrefix(v.Name, prefix))
	}
	for i, n := range c.names {
		if n == "" {
			return nil, fmt.Errorf("counters: enum %s has no value %d", enumName, i)
		}
	}
	return c, nil
}

// Names returns the counter names in index order.
func (c *Counters) Names() []string { return slices.Clone(c.names) }

// Read sums each counter of m over CPUs.
func (c *Counters) Read(m *ebpf.Map) (Values, error) {
	out := make(Values, len(c.names))
	for i, name := range c.names {
		var perCPU []uint64
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", name, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out[name] = sum
	}
	return out, nil
}

// Values are counter values by name, every counter of the enum present.
type Values map[string]uint64

// Get returns the named counter. It panics when name is not a counter:
// a misspelt name must fail, not read 0.
func (v Values) Get(name string) uint64 {
	n, ok := v[name]
	if !ok {
		names := make([]string, 0, len(v))
		for k := range v {
			names = append(names, k)
		}
		slices.Sort(names)
		panic(fmt.Sprintf("no counter %q (counters: %s)", name, strings.Join(names, ", ")))
	}
	return n
}
