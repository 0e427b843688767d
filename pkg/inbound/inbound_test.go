package inbound

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/sockbridge/sockbridge/pkg/podnetns"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// fakeDP is an Attacher whose AttachInbound fails while failAttach is set.
type fakeDP struct {
	attached   map[uint64]uint64
	failAttach error
}

func (f *fakeDP) AttachInbound(id uint64, path string) error {
	if f.failAttach != nil {
		return f.failAttach
	}
	var ino uint64
	fmt.Sscanf(path, "ns-%d", &ino)
	f.attached[id] = ino
	return nil
}
func (f *fakeDP) DetachInbound(id uint64) error                    { delete(f.attached, id); return nil }
func (f *fakeDP) InboundAttached() map[uint64]uint64               { return f.attached }
func (f *fakeDP) ListenerRecorded(uint64) bool                     { return true }
func (f *fakeDP) SeedListeners(uint64, string, []int) (int, error) { return 0, nil }

func wanted(id uint64) policy.Pod {
	p := policy.Pod{CgroupID: id, CgroupPath: fmt.Sprintf("/pod%d", id), Capture: true}
	p.Inbound.AllPorts = true
	return p
}

// TestNotReadyUntilCovered: the agent is not ready for inbound capture
// until a pass that began with the full pod set has attached it to every
// pod with a namespace of its own; pods without a process or on the host
// network do not hold it back, a failing attach does, and the answer does
// not go back once given.
func TestNotReadyUntilCovered(t *testing.T) {
	dp := &fakeDP{attached: map[uint64]uint64{}, failAttach: errors.New("boom")}
	r := New(dp, logrus.New())
	r.find = func(path string) (podnetns.Namespace, error) {
		switch path {
		case "/pod2":
			return podnetns.Namespace{}, fmt.Errorf("x: %w", podnetns.ErrNoProcess)
		case "/pod3":
			return podnetns.Namespace{}, fmt.Errorf("x: %w", podnetns.ErrHostNetns)
		}
		return podnetns.Namespace{Path: "ns-7" + strings.TrimPrefix(path, "/pod"), Inode: 71}, nil
	}
	r.pids = func(string) ([]int, error) { return nil, nil }

	r.Reconcile()
	if r.NotReady() == "" {
		t.Fatal("ready before the pod set was known")
	}
	r.Set([]policy.Pod{wanted(1), wanted(2), wanted(3)})
	r.Reconcile()
	if why := r.NotReady(); !strings.Contains(why, "1 pod(s) of 3") {
		t.Fatalf("attach failing: NotReady() = %q, want 1 pod of 3 left", why)
	}
	dp.failAttach = nil
	r.Reconcile()
	if why := r.NotReady(); why != "" {
		t.Fatalf("every pod with a namespace covered: NotReady() = %q", why)
	}
	if dp.attached[1] != 71 {
		t.Fatalf("pod 1 attached to %v", dp.attached)
	}
	dp.failAttach = errors.New("boom")
	r.Upsert(wanted(4))
	r.Reconcile()
	if why := r.NotReady(); why != "" {
		t.Fatalf("a later pod (the bind guard's) made the agent unready: %q", why)
	}
}
