package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockbridge/sockbridge/pkg/bpfobj"
)

// Values shared by the self-test programs and their helper processes. The
// helpers run in network namespaces of their own, so the fixed ports cannot
// clash with anything on the node.
const (
	connectFromPort = 47001  // the connect4 helper dials 127.0.0.1 here
	connectToPort   = 47002  // and must land here
	splicePort      = 47003  // the splice helper's listener
	spliceTFOPort   = 47004  // the splice helper's Fast Open listener
	sockoptOptname  = 0x5342 // an SOL_IP option Linux does not have
	sockoptAnswer   = 0x53425052
	spliceBytes     = 48<<10 + 123 // fits the receiver's default buffer

	helperTimeout = 5 * time.Second
)

// hook is one program of a self-test and where it attaches: the test's
// cgroup, or the sockhash for an sk_msg program.
type hook struct {
	prog   string
	attach ebpf.AttachType
}

// selfTest is one functional test: programs from bpf/probe.c attached to a
// temporary cgroup, a helper process in that cgroup and a network
// namespace of its own that drives them (helper.go), and a check of what
// the programs counted.
type selfTest struct {
	name      string // the helper's name; the feature is "selftest/<name>"
	minKernel string
	need      Need
	hooks     []hook
	check     func(stats bpfobj.Values) error
}

func (t selfTest) feature() Feature {
	return Feature{Name: "selftest/" + t.name, Kind: KindSelfTest, MinKernel: t.minKernel, NeededFor: t.need}
}

func selfTests() []selfTest {
	return []selfTest{{
		// A connect to 127.0.0.1:47001 lands on :47002 and getpeername
		// still says :47001, as a captured connection must.
		name: "connect4", minKernel: "5.8", need: NeedCapture,
		hooks: []hook{
			{progConnect4Rewrite, ebpf.AttachCGroupInet4Connect},
			{progGetpeername4Answer, ebpf.AttachCgroupInet4GetPeername},
		},
		check: func(stats bpfobj.Values) error {
			if stats.Get("connect_rewritten") == 0 {
				return errors.New("the connect4 program never rewrote the helper's connect")
			}
			if stats.Get("peername_restored") == 0 {
				return errors.New("the getpeername4 program never answered the helper's getpeername")
			}
			return nil
		},
	}, {
		// getsockopt(SOL_IP, 0x5342), which Linux rejects, is answered
		// by the program, as SO_ORIGINAL_DST must be; IP_TTL is not
		// touched.
		name: "getsockopt", minKernel: "5.3", need: NeedCapture,
		hooks: []hook{{progGetsockoptAnswer, ebpf.AttachCGroupGetsockopt}},
		check: func(stats bpfobj.Values) error {
			if stats.Get("sockopt_answered") == 0 {
				return errors.New("the getsockopt program never answered the helper's getsockopt")
			}
			return nil
		},
	}, {
		// Bytes sent on one end of a loopback connection are moved by
		// sk_msg into the other end's receive queue, arrive intact, and
		// the receiver's FIONREAD counts them (a 2026 sockmap regression
		// in some 6.6.x and 6.12.x stable kernels reports less and
		// stalls senders).
		//
		// Then TCP Fast Open: a connection opened with it sends its
		// first bytes over TCP before or while its sockets would join
		// the sockhash, and spliced bytes would overtake them (the
		// receiver reads sk_msg's queue first). The datapath keeps such
		// a connection out, judging by the establishing segment's
		// payload and the client's data_segs_out in sockops (kernel
		// 5.10); the same rule, in probe.c, must keep two Fast Open
		// connections (one without a cookie, one with) out with their
		// bytes in order, while a plain connection is still spliced.
		// (One helper for both: a helper process more made the probe
		// miss its 2 s under emulation, make test-kernels.)
		name: "splice", minKernel: "5.10", need: NeedSplice,
		hooks: []hook{
			{progSockopsInsert, ebpf.AttachCGroupSockOps},
			{progSkmsgRedirect, ebpf.AttachSkMsgVerdict},
		},
		check: func(stats bpfobj.Values) error {
			if n := stats.Get("sockhash_added"); n < 2 {
				return fmt.Errorf("sockops added %d of 2 sockets to the sockhash", n)
			}
			if stats.Get("msg_redirected") == 0 {
				return errors.New("sk_msg redirected nothing: the bytes went over TCP")
			}
			if n := stats.Get("sockhash_skipped"); n < 2 {
				return fmt.Errorf("sockops kept %d sockets of the Fast Open connections out of the sockhash, want at least 2: the datapath cannot tell them", n)
			}
			return nil
		},
	}}
}

// runSelfTest runs t in a child cgroup of top, which the caller removes.
func runSelfTest(ctx context.Context, top string, t selfTest) Feature {
	f := t.feature()
	detail, err := t.run(ctx, top)
	if err != nil {
		return result(f, err)
	}
	f.Detail = detail
	return result(f, nil)
}

func (t selfTest) run(ctx context.Context, top string) (_ string, err error) {
	cg, err := makeCgroup(top, t.name)
	if err != nil {
		return "", err
	}
	coll, counters, err := t.load()
	if err != nil {
		return "", err
	}
	defer coll.Close()
	detach, err := t.attach(coll, cg)
	if err != nil {
		return "", err
	}
	defer func() { err = errors.Join(err, detach()) }()

	detail, err := runHelper(ctx, cg, t.name)
	if err != nil {
		return "", err
	}
	// Without programs (TestSelfTestsFailWithoutPrograms) there is no
	// counter map: nothing was counted.
	stats := bpfobj.Values{}
	for _, name := range counters.Names() {
		stats[name] = 0
	}
	if m := coll.Maps[mapStats]; m != nil {
		if stats, err = counters.Read(m); err != nil {
			return "", fmt.Errorf("read self-test counters: %w", err)
		}
	}
	if err := t.check(stats); err != nil {
		return "", err
	}
	return detail, nil
}

// load loads t's programs and the maps they use, nothing else, so that a
// kernel without one program type fails only the tests that need it. It
// returns the counters' names with the collection.
func (t selfTest) load() (*ebpf.Collection, *bpfobj.Counters, error) {
	spec, err := loadProbeSpec()
	if err != nil {
		return nil, nil, err
	}
	counters, err := bpfobj.CountersOf(spec, "sbp_stat", "SBP_STAT_")
	if err != nil {
		return nil, nil, err
	}
	consts := map[string]any{
		varConnectFromPort: uint16(connectFromPort),
		varConnectToPort:   uint16(connectToPort),
		varSockoptOptname:  uint32(sockoptOptname),
		varSockoptAnswer:   uint32(sockoptAnswer),
	}
	if err := bpfobj.SetVariables(spec, consts); err != nil {
		return nil, nil, err
	}
	var keep []string
	for _, h := range t.hooks {
		keep = append(keep, h.prog)
	}
	if err := bpfobj.Keep(spec, keep); err != nil {
		return nil, nil, err
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, nil, bpfobj.LoadError("self-test programs", err)
	}
	return coll, counters, nil
}

// attach attaches t's programs to cgroup (and the sockhash) and returns
// the function that detaches them, in reverse order.
func (t selfTest) attach(coll *ebpf.Collection, cgroup string) (func() error, error) {
	var undo []func() error
	detach := func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		return errors.Join(errs...)
	}
	for _, h := range t.hooks {
		prog := coll.Programs[h.prog]
		if h.attach == ebpf.AttachSkMsgVerdict {
			m := coll.Maps[mapSocks]
			opts := link.RawAttachProgramOptions{Target: m.FD(), Program: prog, Attach: h.attach}
			if err := link.RawAttachProgram(opts); err != nil {
				return nil, errors.Join(fmt.Errorf("attach %s to the sockhash: %w", h.prog, err), detach())
			}
			undo = append(undo, func() error {
				return link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: prog, Attach: h.attach})
			})
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: h.attach, Program: prog})
		if err != nil {
			return nil, errors.Join(fmt.Errorf("attach %s to %s: %w", h.prog, cgroup, err), detach())
		}
		undo = append(undo, l.Close)
	}
	return detach, nil
}

// helperResult is what a helper process prints on stdout.
type helperResult struct {
	Detail string `json:"detail,omitempty"`
	Error  string `json:"error,omitempty"`
}

// runHelper re-executes this binary as the named self-test's helper. The
// helper starts inside cgroup (clone3 CLONE_INTO_CGROUP, Linux 5.7), so
// every socket it opens belongs there from the start, and in a network
// namespace of its own (CLONE_NEWNET), which disappears when it exits.
func runHelper(ctx context.Context, cgroup, name string) (string, error) {
	dir, err := os.Open(cgroup)
	if err != nil {
		return "", fmt.Errorf("open cgroup: %w", err)
	}
	defer dir.Close()
	ctx, cancel := context.WithTimeout(ctx, helperTimeout)
	defer cancel()

	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{"sockbridge-probe-" + name}
	cmd.Env = []string{selfTestEnv + "=" + name}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true,
		CgroupFD:    int(dir.Fd()),
		Cloneflags:  syscall.CLONE_NEWNET,
		Pdeathsig:   syscall.SIGKILL,
	}
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("run the %s helper: %w %s", name, err, strings.TrimSpace(stderr.String()))
	}
	var res helperResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return "", fmt.Errorf("read the %s helper's result %q: %w", name, stdout.String(), err)
	}
	if res.Error != "" {
		return "", errors.New(res.Error)
	}
	return res.Detail, nil
}
