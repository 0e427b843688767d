package probe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

type attachType struct {
	name      string
	prog      ebpf.ProgramType
	attach    ebpf.AttachType
	minKernel string
	need      Need
}

// cgroupAttachTypes are the cgroup hooks the datapath attaches to.
func cgroupAttachTypes() []attachType {
	return []attachType{
		{"cgroup/connect4", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect, "4.17", NeedCapture},
		{"cgroup/getpeername4", ebpf.CGroupSockAddr, ebpf.AttachCgroupInet4GetPeername, "5.8", NeedCapture},
		{"cgroup/connect6", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet6Connect, "4.17", NeedIPv6},
		{"cgroup/getpeername6", ebpf.CGroupSockAddr, ebpf.AttachCgroupInet6GetPeername, "5.8", NeedIPv6},
		{"cgroup/bind4", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Bind, "4.17", NeedInbound},
		{"cgroup/bind6", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet6Bind, "4.17", NeedInbound},
		{"cgroup/getsockopt", ebpf.CGroupSockopt, ebpf.AttachCGroupGetsockopt, "5.3", NeedCapture},
		{"cgroup/sock_ops", ebpf.SockOps, ebpf.AttachCGroupSockOps, "4.13", NeedCapture},
		{"cgroup/sendmsg4", ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Sendmsg, "4.18", NeedDNS},
		{"cgroup/sendmsg6", ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Sendmsg, "4.18", NeedDNS},
		{"cgroup/recvmsg4", ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Recvmsg, "5.2", NeedDNS},
		{"cgroup/recvmsg6", ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Recvmsg, "5.2", NeedDNS},
	}
}

// skMsgVerdict is the sk_msg attach point on a sockhash.
func skMsgVerdict() attachType {
	return attachType{"sk_msg/verdict", ebpf.SkMsg, ebpf.AttachSkMsgVerdict, "4.17", NeedSplice}
}

func bpfLinkFeature() Feature {
	return Feature{Name: "bpf_link/cgroup", Kind: KindKernel, MinKernel: "5.7", NeededFor: NeedCapture}
}

// probeCgroupHooks runs everything that needs a temporary cgroup: attach
// types, bpf_link and the self-tests, each in its own child of one
// sockbridge-probe-* cgroup under parent, which is removed afterwards; the
// error is about that removal. An empty parent means there is no cgroup v2
// hierarchy: all are reported unsupported.
func probeCgroupHooks(ctx context.Context, parent string) ([]Feature, error) {
	tests := selfTests()
	if parent == "" {
		return unsupportedHooks(tests, errors.New("no cgroup v2 hierarchy to attach to")), nil
	}
	removeStale(parent, time.Now())
	top, err := makeCgroup(parent, "")
	if err != nil {
		return unsupportedHooks(tests, err), nil
	}

	var attach []Feature
	selftests := make([]Feature, len(tests))
	var wg sync.WaitGroup
	wg.Go(func() { attach = attachFeatures(top) })
	for i, t := range tests {
		wg.Go(func() { selftests[i] = runSelfTest(ctx, top, t) })
	}
	wg.Wait()
	return append(attach, selftests...), removeCgroup(top)
}

func unsupportedHooks(tests []selfTest, err error) []Feature {
	var out []Feature
	for _, a := range append(cgroupAttachTypes(), skMsgVerdict()) {
		out = append(out, result(Feature{Name: a.name, Kind: KindAttachType, MinKernel: a.minKernel, NeededFor: a.need}, err))
	}
	out = append(out, result(bpfLinkFeature(), err))
	for _, t := range tests {
		out = append(out, result(t.feature(), err))
	}
	return out
}

// attachFeatures attaches a trivial program for each attach type to a
// child cgroup of top, through bpf_link and, when that fails, through the
// older BPF_PROG_ATTACH to tell a missing attach type from a missing
// bpf_link.
func attachFeatures(top string) []Feature {
	var out []Feature
	bpfLink := bpfLinkFeature()
	cg, err := makeCgroup(top, "attach")
	if err != nil {
		return unsupportedHooks(nil, err)
	}
	dir, err := os.Open(cg)
	if err != nil {
		return unsupportedHooks(nil, fmt.Errorf("open cgroup: %w", err))
	}
	defer dir.Close()

	var linkErr error
	linked := false
	for _, a := range cgroupAttachTypes() {
		f := Feature{Name: a.name, Kind: KindAttachType, MinKernel: a.minKernel, NeededFor: a.need}
		viaLink, err := tryCgroupAttach(int(dir.Fd()), a)
		if err == nil && viaLink == nil {
			linked = true
		}
		if viaLink != nil && linkErr == nil {
			linkErr = viaLink
		}
		out = append(out, result(f, err))
	}
	a := skMsgVerdict()
	out = append(out, result(Feature{Name: a.name, Kind: KindAttachType, MinKernel: a.minKernel, NeededFor: a.need}, trySkMsgAttach()))

	switch {
	case linked:
		bpfLink.Detail = "cgroup programs attach through bpf_link"
		out = append(out, result(bpfLink, nil))
	case linkErr != nil:
		out = append(out, result(bpfLink, linkErr))
	default:
		out = append(out, result(bpfLink, errors.New("no cgroup attach type to try it with")))
	}
	return out
}

// trivialProgram loads a program that only returns verdict.
func trivialProgram(a attachType, verdict int32) (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:       "sbp_trivial",
		Type:       a.prog,
		AttachType: a.attach,
		License:    "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, verdict),
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("load trivial %s program: %w", a.name, err)
	}
	return prog, nil
}

// tryCgroupAttach attaches and detaches a trivial program. err is nil when
// the attach type works; viaLink is why bpf_link did not.
func tryCgroupAttach(cgroupFD int, a attachType) (viaLink, err error) {
	prog, err := trivialProgram(a, 1)
	if err != nil {
		return nil, err
	}
	defer prog.Close()
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: cgroupFD, Program: prog, Attach: a.attach})
	if err == nil {
		return nil, l.Close()
	}
	viaLink = fmt.Errorf("attach %s through bpf_link: %w", a.name, err)
	opts := link.RawAttachProgramOptions{Target: cgroupFD, Program: prog, Attach: a.attach}
	if err := link.RawAttachProgram(opts); err != nil {
		return viaLink, fmt.Errorf("attach %s: %w", a.name, err)
	}
	return viaLink, link.RawDetachProgram(link.RawDetachProgramOptions{Target: cgroupFD, Program: prog, Attach: a.attach})
}

// trySkMsgAttach attaches a trivial sk_msg program to a throw-away sockhash.
func trySkMsgAttach() error {
	a := skMsgVerdict()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sbp_trivial", Type: ebpf.SockHash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create sockhash: %w", err)
	}
	defer m.Close()
	prog, err := trivialProgram(a, 1) // SK_PASS
	if err != nil {
		return err
	}
	defer prog.Close()
	opts := link.RawAttachProgramOptions{Target: m.FD(), Program: prog, Attach: a.attach}
	if err := link.RawAttachProgram(opts); err != nil {
		return fmt.Errorf("attach %s to a sockhash: %w", a.name, err)
	}
	return link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: prog, Attach: a.attach})
}

// skLookupAttach is the sk_lookup attach point on a network namespace.
func skLookupAttach() attachType {
	return attachType{"sk_lookup/netns", ebpf.SkLookup, ebpf.AttachSkLookup, "5.9", NeedInbound}
}

// probeSkLookupAttach attaches a trivial sk_lookup program (SK_PASS: it
// selects nothing) to a throw-away network namespace of its own, never to
// the node's, and detaches it.
func probeSkLookupAttach() Feature {
	a := skLookupAttach()
	f := Feature{Name: a.name, Kind: KindAttachType, MinKernel: a.minKernel, NeededFor: a.need}
	return result(f, trySkLookupAttach(a))
}

func trySkLookupAttach(a attachType) error {
	prog, err := trivialProgram(a, 1) // SK_PASS
	if err != nil {
		return err
	}
	defer prog.Close()
	ns, err := newNetns()
	if err != nil {
		return err
	}
	defer unix.Close(ns)
	l, err := link.AttachNetNs(ns, prog)
	if err != nil {
		return fmt.Errorf("attach %s to a new network namespace: %w", a.name, err)
	}
	return l.Close()
}

// newNetns creates a network namespace nobody is in and returns an fd that
// holds it: a thread locked for the purpose unshares into it and moves
// back. If the thread cannot move back, its goroutine exits still locked
// and the Go runtime ends the thread.
func newNetns() (int, error) {
	type res struct {
		fd  int
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			c <- res{-1, fmt.Errorf("open the thread's netns: %w", err)}
			return
		}
		defer unix.Close(orig)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			c <- res{-1, fmt.Errorf("create a network namespace: %w", err)}
			return
		}
		fd, oerr := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			if oerr == nil {
				unix.Close(fd)
			}
			c <- res{-1, fmt.Errorf("return from the new network namespace: %w", err)}
			return // the thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		if oerr != nil {
			c <- res{-1, fmt.Errorf("open the new network namespace: %w", oerr)}
			return
		}
		c <- res{fd, nil}
	}()
	r := <-c
	return r.fd, r.err
}
