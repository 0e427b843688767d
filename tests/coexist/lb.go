package coexist

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockbridge/sockbridge/pkg/bpfobj"
)

// lbObject is bpf/lb.c compiled (gen.go).
//
//go:embed lb_bpfel.o
var lbObject []byte

// Names in bpf/lb.c; TestObjectNames checks them against the object.
const (
	lbProgConnect4 = "lb_connect4"
	lbMapStats     = "lb_stats"
	lbVarConfig    = "lb_cfg"
	lbStatEnum     = "lb_stat"
)

// lbConfig is struct lb_config: addresses and ports in network byte order.
// VariableSpec.Set refuses a value whose size differs from the C struct's.
type lbConfig struct {
	ServiceIP4  uint32
	BackendIP4  uint32
	ServicePort uint16
	BackendPort uint16
}

// lbObjects are the loaded program and counter map.
type lbObjects struct {
	Connect4 *ebpf.Program `ebpf:"lb_connect4"`
	Stats    *ebpf.Map     `ebpf:"lb_stats"`
}

func (o *lbObjects) Close() error {
	var errs []error
	if o.Connect4 != nil {
		errs = append(errs, o.Connect4.Close())
	}
	if o.Stats != nil {
		errs = append(errs, o.Stats.Close())
	}
	return errors.Join(errs...)
}

// loadLbSpec parses the embedded object.
func loadLbSpec() (*ebpf.CollectionSpec, error) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(lbObject))
	if err != nil {
		return nil, fmt.Errorf("parse the lb stand-in's BPF object: %w", err)
	}
	return spec, nil
}

// LB is the stand-in load balancer attached to one cgroup with bpf_link.
// Its link is held by this process only (not pinned): it goes when Close
// runs or the process ends.
type LB struct {
	objs     lbObjects
	link     link.Link
	counters *bpfobj.Counters
}

// Attach loads the load balancer translating service to backend and
// attaches it to cgroup's connect4 hook.
func Attach(cgroup string, service, backend netip.AddrPort) (_ *LB, err error) {
	if !service.Addr().Is4() || !backend.Addr().Is4() {
		return nil, errors.New("lb: IPv4 service and backend only")
	}
	spec, err := loadLbSpec()
	if err != nil {
		return nil, err
	}
	cfg := lbConfig{
		ServiceIP4:  netOrder32(service.Addr()),
		BackendIP4:  netOrder32(backend.Addr()),
		ServicePort: netOrder16(service.Port()),
		BackendPort: netOrder16(backend.Port()),
	}
	if err := bpfobj.SetVariables(spec, map[string]any{lbVarConfig: cfg}); err != nil {
		return nil, err
	}
	lb := &LB{}
	if lb.counters, err = bpfobj.CountersOf(spec, lbStatEnum, "LB_STAT_"); err != nil {
		return nil, err
	}
	if err := spec.LoadAndAssign(&lb.objs, nil); err != nil {
		return nil, bpfobj.LoadError("the lb stand-in", err)
	}
	lb.link, err = link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: ebpf.AttachCGroupInet4Connect, Program: lb.objs.Connect4})
	if err != nil {
		lb.objs.Close()
		return nil, fmt.Errorf("attach lb to %s: %w", cgroup, err)
	}
	return lb, nil
}

// ProgramID is the kernel's id of the attached program.
func (lb *LB) ProgramID() (ebpf.ProgramID, error) {
	info, err := lb.objs.Connect4.Info()
	if err != nil {
		return 0, err
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("lb: no program id")
	}
	return id, nil
}

// Stats returns "seen" (TCP connects the program ran for) and
// "translated" (connects to the service sent to the backend).
func (lb *LB) Stats() (bpfobj.Values, error) {
	out := bpfobj.Values{}
	for i, name := range lb.counters.Names() {
		var v uint64
		if err := lb.objs.Stats.Lookup(uint32(i), &v); err != nil {
			return nil, fmt.Errorf("lb counter %s: %w", name, err)
		}
		out[name] = v
	}
	return out, nil
}

// Close detaches and unloads the load balancer.
func (lb *LB) Close() error {
	return errors.Join(lb.link.Close(), lb.objs.Close())
}

// netOrder32 is a as the kernel stores it, read as a native integer.
func netOrder32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// netOrder16 is port in network byte order, read as a native integer.
func netOrder16(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}
