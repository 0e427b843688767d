// Package probe finds out what this node's kernel can do for sockbridge,
// by trying each capability rather than reading the kernel version: vendor
// kernels backport and renumber helpers.
//
// Run checks the host (cgroup v2, bpffs, BTF), every program type, map type
// and helper the datapath uses (with github.com/cilium/ebpf/features),
// attaches a trivial program for each attach type to a temporary child
// cgroup (through bpf_link), and runs functional self-tests where a feature
// can exist but misbehave: a connect4 rewrite, a getsockopt answer, a
// sockhash + sk_msg redirect whose receiver must report the bytes queued
// through FIONREAD, and TCP Fast Open connections that the datapath's rule
// must keep out of the sockhash so their bytes stay in order.
// Report.Plan says what the agent can enable;
// Report.Err is the one line the agent exits with when capture is
// impossible.
//
// Kernel: the probe itself runs on any kernel with bpf(2); it needs root
// (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for the temporary cgroup and
// network namespace). The self-tests start their helper process straight in
// the temporary cgroup (clone3 with CLONE_INTO_CGROUP, Linux 5.7); on an
// older kernel they fail, which the essential features fail anyway.
//
// Self-test helpers: the probe re-executes /proc/self/exe with
// SOCKBRIDGE_PROBE_SELFTEST set to run one self-test's client side, so any
// binary that runs the probe calls RunHelperIfRequested first thing in main
// (or TestMain).
//
// The caller removes the memlock rlimit first on kernels before 5.11
// (rlimit.RemoveMemlock; cmd/sockbridge does).
package probe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/pkg/bpffs"
	"github.com/sockbridge/sockbridge/pkg/cgroups"
)

// DefaultBPFFS is the bpffs mount the datapath pins under.
const DefaultBPFFS = bpffs.Root

// Options says where the probe looks and where it may create its temporary
// cgroups.
type Options struct {
	// CgroupRoot is the cgroup v2 mount point; "" detects it
	// (pkg/cgroups.Root).
	CgroupRoot string
	// CgroupParent is the cgroup v2 directory under which the probe
	// creates its temporary cgroups (sockbridge-probe-<random>), absolute
	// or relative to CgroupRoot; "" means CgroupRoot. Programs are only
	// ever attached to those temporary cgroups, never to CgroupParent.
	CgroupParent string
	// BPFFS is the directory that must be on a bpf filesystem for the
	// datapath's pins; "" means DefaultBPFFS.
	BPFFS string
}

// Run probes the kernel and returns the report. It returns an error only
// when it cannot probe at all (not root, no uname); a missing feature is a
// result in the report, see Report.Err and Report.Plan. Everything Run
// creates (cgroups, network namespaces, programs, maps, processes) is gone
// when it returns, or it returns an error naming what it could not remove.
func Run(ctx context.Context, opts Options) (*Report, error) {
	start := time.Now()
	release, err := kernelRelease()
	if err != nil {
		return nil, err
	}
	if err := features.HaveMapType(ebpf.Hash); errors.Is(err, unix.EPERM) {
		return nil, fmt.Errorf("probe the kernel: bpf(2) not permitted, run as root: %w", err)
	}

	r := &Report{SchemaVersion: SchemaVersion, KernelRelease: release}
	cgroup2, root := probeCgroup2(opts.CgroupRoot)
	r.Features = append(r.Features, cgroup2, probeBPFFS(opts.BPFFS), probeBTF(), probeIPv6Sockets())

	var parent string
	if cgroup2.Supported {
		parent = root
		if opts.CgroupParent != "" {
			parent = cgroups.Resolve(root, opts.CgroupParent)
		}
	}
	// The self-tests mostly wait for their helper processes to start:
	// probe the types meanwhile.
	var (
		types, hooks []Feature
		hooksErr     error
		wg           sync.WaitGroup
	)
	wg.Go(func() { hooks, hooksErr = probeCgroupHooks(ctx, parent) })
	types = probeTypes()
	wg.Wait()
	if hooksErr != nil {
		return nil, fmt.Errorf("clean up after the probe: %w", hooksErr)
	}
	r.Features = append(append(r.Features, types...), hooks...)
	r.Features = append(r.Features, probeSkLookupAttach(), probeFlowListing())
	classifyAll(r.Features, hostEnv(release))
	r.DurationMS = time.Since(start).Milliseconds()
	return r, nil
}

func kernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// probeCgroup2 finds the cgroup v2 hierarchy and returns its root.
func probeCgroup2(root string) (Feature, string) {
	f := Feature{Name: "cgroup2", Kind: KindKernel, MinKernel: "4.5", NeededFor: NeedCapture}
	mounts, err := cgroups.Mounts()
	if err != nil {
		f.Error = err.Error()
		return finish(f), ""
	}
	if root == "" {
		root, err = cgroups.Root()
		if err != nil {
			f.Error, f.Cause = err.Error(), CauseNotMounted
			return finish(f), ""
		}
	} else if ok, err := cgroups.IsCgroup2(root); err != nil || !ok {
		f.Error, f.Cause = fmt.Sprintf("%s is not a cgroup v2 mount", root), CauseNotMounted
		if err != nil {
			f.Error, f.Cause = err.Error(), CauseProbeFailed
		}
		return finish(f), ""
	}
	f.Supported = true
	f.Detail = "root " + root
	if len(mounts) > 1 {
		f.Detail += fmt.Sprintf(" (cgroup2 mounts: %v)", mounts)
	}
	return finish(f), root
}

// probeBPFFS checks that the pin directory is on bpffs, or will be once the
// agent has mounted bpffs at /sys/fs/bpf (as it does on a fresh node).
func probeBPFFS(dir string) Feature {
	f := Feature{Name: "bpffs", Kind: KindKernel, MinKernel: "4.4", NeededFor: NeedCapture}
	if dir == "" {
		dir = DefaultBPFFS
	}
	st := bpffs.Check(dir)
	switch st.State {
	case bpffs.Mounted, bpffs.Mountable:
		f.Supported = true
		f.Detail = st.Detail
	case bpffs.NotBPFFS:
		f.Error, f.Cause = st.Detail, CauseNotMounted
	default:
		f.Error, f.Cause = st.Detail, CauseKernelConfig
	}
	return finish(f)
}

// probeBTF looks for the kernel's own BTF, which programs that read kernel
// structs (CO-RE) need; the capture programs read only their context.
func probeBTF() Feature {
	const path = "/sys/kernel/btf/vmlinux"
	f := Feature{Name: "btf", Kind: KindKernel, MinKernel: "5.4", NeededFor: NeedNone}
	if _, err := os.Stat(path); err != nil {
		f.Error = err.Error()
	} else {
		f.Supported = true
		f.Detail = path
	}
	return finish(f)
}

// FeatureIPv6Sockets names the kernel fact whether AF_INET6 sockets exist:
// the plan captures IPv4 only when they do not.
const FeatureIPv6Sockets = "ipv6_sockets"

// probeIPv6Sockets finds out whether the kernel has IPv6 sockets. A kernel
// built without IPv6 (or booted with ipv6.disable=1) refuses AF_INET6 with
// EAFNOSUPPORT; then nothing can bypass the sidecar over IPv6.
func probeIPv6Sockets() Feature {
	f := Feature{Name: FeatureIPv6Sockets, Kind: KindKernel, MinKernel: "2.2", NeededFor: NeedNone}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	switch {
	case err == nil:
		unix.Close(fd)
		f.Supported = true
		f.Detail = "AF_INET6 sockets exist: the IPv6 hooks are essential"
	case errors.Is(err, unix.EAFNOSUPPORT):
		f.Error, f.Cause = "socket(AF_INET6): "+err.Error(), CauseKernelConfig
	default:
		f.Error, f.Cause = "socket(AF_INET6): "+err.Error(), CauseProbeFailed
	}
	return finish(f)
}

// finish sets the fields derived from others.
func finish(f Feature) Feature {
	f.Essential = f.NeededFor == NeedCapture
	return f
}

// result turns a check's error into a feature; Run classifies the error
// into f.Cause once every check is done.
func result(f Feature, err error) Feature {
	f.Supported, f.Error, f.Cause, f.err = err == nil, "", "", err
	if err != nil {
		f.Error = err.Error()
	}
	return finish(f)
}

// classifyAll sets the cause of every unsupported feature that has none.
func classifyAll(fs []Feature, e env) {
	for i := range fs {
		f := &fs[i]
		if f.Supported || f.Cause != "" {
			continue
		}
		switch {
		case f.Kind == KindSelfTest:
			f.Cause = CauseSelfTestFailed
		case f.err != nil:
			classify(f, f.err, e)
		default:
			f.Cause = CauseProbeFailed
		}
		f.err = nil
	}
}
