// Package inbound keeps inbound capture attached to the network namespace
// of every pod that wants it: the datapath's sk_lookup program on each
// pod's namespace (datapath.AttachInbound), found from the pod's cgroup
// (pkg/podnetns), from the moment the pod's sandbox exists until the pod
// goes.
//
// A pod wants inbound capture when it is captured and its inbound policy
// takes some port (includeInboundPorts "*" or a list). The pod's namespace
// exists once its sandbox runs, before any app container starts; the
// reconciler looks for it at every pod change and every interval (50 ms)
// until it is there. The datapath's bind guard keeps an app from listening
// on a captured port until then, so there is no window. A sidecar that
// listened before the agent watched (an agent installed on a running node)
// is recorded from its existing socket (datapath.SeedListeners). Once a
// pod is done it costs a pass nothing; a link whose namespace is gone (the
// sandbox was recreated) is attached again to the new one.
package inbound

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/sockbridge/sockbridge/pkg/podnetns"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// DefaultInterval is how often pods still without a namespace are looked at.
const DefaultInterval = 50 * time.Millisecond

// Attacher is the datapath's inbound side.
type Attacher interface {
	AttachInbound(cgroupID uint64, netnsPath string) error
	DetachInbound(cgroupID uint64) error
	// InboundAttached maps each pod with inbound capture to its
	// namespace's inode (0 once the namespace is gone).
	InboundAttached() map[uint64]uint64
	// ListenerRecorded says whether the pod's sidecar listener is known
	// to sk_lookup; SeedListeners records the ones that listened before
	// the datapath watched (pids are the pod's processes).
	ListenerRecorded(cgroupID uint64) bool
	SeedListeners(cgroupID uint64, netnsPath string, pids []int) (int, error)
}

// Wants says whether a pod wants inbound capture. Its cgroup path must be
// known to find its namespace.
func Wants(p policy.Pod) bool {
	return p.Capture && p.CgroupPath != "" && (p.Inbound.AllPorts || len(p.Inbound.IncludePorts) > 0)
}

// Reconciler attaches and detaches inbound capture as pods come and go.
type Reconciler struct {
	dp       Attacher
	log      logrus.FieldLogger
	find     func(cgroupPath string) (podnetns.Namespace, error)
	pids     func(cgroupPath string) ([]int, error)
	interval time.Duration

	mu     sync.Mutex
	want   map[uint64]string // pod cgroup id -> pod cgroup path
	logged map[uint64]string // last error logged per pod
	// done holds, per pod, the namespace inode whose capture is attached
	// and whose pre-existing listeners are recorded: such a pod costs a
	// pass nothing until its link's namespace goes.
	done   map[uint64]uint64
	synced bool // the wanted set is complete (after Set)
	kick   chan struct{}
	// covered is set by the first pass that began with the full set and
	// left no pod with a namespace uncaptured; until then notReady says
	// how many are left (NotReady).
	covered  bool
	notReady string
}

// New returns a reconciler for dp. It detaches nothing until Set has given
// it the full set of pods, so that a restarting agent keeps every pinned
// link while it learns its pods.
func New(dp Attacher, log logrus.FieldLogger) *Reconciler {
	return &Reconciler{
		dp: dp, log: log, find: podnetns.Find, pids: podnetns.PIDs, interval: DefaultInterval,
		want: map[uint64]string{}, logged: map[uint64]string{}, done: map[uint64]uint64{}, kick: make(chan struct{}, 1),
		notReady: "the pod list is not known yet",
	}
}

// Set replaces the wanted pods with pods (those that want inbound capture).
func (r *Reconciler) Set(pods []policy.Pod) {
	r.mu.Lock()
	r.want = map[uint64]string{}
	for _, p := range pods {
		if Wants(p) {
			r.want[p.CgroupID] = p.CgroupPath
		}
	}
	r.synced = true
	r.mu.Unlock()
	r.poke()
}

// Upsert records a pod's new state.
func (r *Reconciler) Upsert(p policy.Pod) {
	r.mu.Lock()
	if Wants(p) {
		r.want[p.CgroupID] = p.CgroupPath
	} else {
		delete(r.want, p.CgroupID)
	}
	r.mu.Unlock()
	r.poke()
}

// Delete forgets a pod.
func (r *Reconciler) Delete(cgroupID uint64) {
	r.mu.Lock()
	delete(r.want, cgroupID)
	delete(r.done, cgroupID)
	r.mu.Unlock()
	r.poke()
}

func (r *Reconciler) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run reconciles at every change and every interval until ctx ends.
func (r *Reconciler) Run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		r.Reconcile()
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-t.C:
		}
	}
}

// Reconcile makes one pass: every wanted pod whose namespace exists gets
// inbound capture on that namespace, and (once the full set is known)
// every other pod loses it. Pods whose sandbox has no process yet wait for
// the next pass; other errors are logged once per pod and retried.
func (r *Reconciler) Reconcile() {
	r.mu.Lock()
	want := make(map[uint64]string, len(r.want))
	for id, path := range r.want {
		want[id] = path
	}
	synced := r.synced
	r.mu.Unlock()

	attached := r.dp.InboundAttached()
	pending := 0 // pods with a namespace but without inbound capture yet
	for id, path := range want {
		if ino, ok := attached[id]; ok && ino != 0 && r.doneFor(id) == ino {
			continue
		}
		ns, err := r.find(path)
		if err != nil {
			// A pod without a process has no namespace that traffic
			// could reach yet; a host-network pod has none of its own
			// (sk_lookup is never attached to the node's namespace).
			if !errors.Is(err, podnetns.ErrNoProcess) {
				if !errors.Is(err, podnetns.ErrHostNetns) {
					pending++
				}
				r.logOnce(id, err, "cannot find the pod's network namespace; inbound capture waits")
			}
			continue
		}
		pending++ // until this pod is done below
		if ino, ok := attached[id]; !ok || ino != ns.Inode {
			if err := r.dp.AttachInbound(id, ns.Path); err != nil {
				r.logOnce(id, err, "attach inbound capture; retrying")
				continue
			}
			r.log.WithField("cgroup_id", id).WithField("netns", ns.Inode).Debug("inbound capture attached")
		}
		if !r.dp.ListenerRecorded(id) {
			// The sidecar listened before sockops could see it (the
			// agent came after the pod), or does not listen yet (then
			// sockops records it when it does).
			pids, err := r.pids(path)
			if err == nil {
				var n int
				n, err = r.dp.SeedListeners(id, ns.Path, pids)
				if n > 0 {
					r.log.WithField("cgroup_id", id).WithField("listeners", n).Debug("recorded the sidecar's existing inbound listeners")
				}
			}
			if err != nil {
				r.logOnce(id, err, "record the sidecar's inbound listener; retrying")
				continue
			}
		}
		r.clear(id)
		r.mu.Lock()
		r.done[id] = ns.Inode
		r.mu.Unlock()
		pending--
	}
	if !synced {
		return
	}
	r.mu.Lock()
	if !r.covered {
		if pending == 0 {
			r.covered, r.notReady = true, ""
			r.log.WithField("pods", len(want)).Info("inbound capture attached to every pod that wants it")
		} else {
			r.notReady = fmt.Sprintf("%d pod(s) of %d without inbound capture yet (the log says why)", pending, len(want))
		}
	}
	r.mu.Unlock()
	for id := range attached {
		if _, ok := want[id]; ok {
			continue
		}
		if err := r.dp.DetachInbound(id); err != nil {
			r.logOnce(id, err, "detach inbound capture; retrying")
			continue
		}
		r.mu.Lock()
		delete(r.done, id)
		r.mu.Unlock()
		r.log.WithField("cgroup_id", id).Debug("inbound capture detached")
	}
}

// NotReady is "" once one pass that began with the full pod set (Set) has
// attached inbound capture to every wanted pod whose namespace exists, and
// recorded its sidecar's listener; until then it says how many pods are
// left. Before that, a pod that already ran when the agent started can be
// reached past its sidecar (no capture yet) or be refused (no listener
// yet). Pods that come later are covered by the bind guard instead, so the
// answer does not go back.
func (r *Reconciler) NotReady() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.notReady
}

func (r *Reconciler) doneFor(id uint64) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done[id]
}

func (r *Reconciler) logOnce(id uint64, err error, msg string) {
	r.mu.Lock()
	seen := r.logged[id] == err.Error()
	r.logged[id] = err.Error()
	r.mu.Unlock()
	if !seen {
		r.log.WithField("cgroup_id", id).WithError(err).Warn(msg)
	}
}

func (r *Reconciler) clear(id uint64) {
	r.mu.Lock()
	delete(r.logged, id)
	r.mu.Unlock()
}

// PodMap is the datapath's pod side, as the controller and the pod file
// drive it.
type PodMap interface {
	UpsertPod(policy.Pod) error
	DeletePod(cgroupID uint64) error
	SyncPods([]policy.Pod) error
}

// Tracking wraps a pod map so that every change also reaches the
// reconciler: the pod entry first (its ports are captured only once it is
// in the map), then the namespace.
type Tracking struct {
	PodMap
	R *Reconciler
}

// UpsertPod writes the pod, then records it for inbound capture.
func (t Tracking) UpsertPod(p policy.Pod) error {
	if err := t.PodMap.UpsertPod(p); err != nil {
		return err
	}
	t.R.Upsert(p)
	return nil
}

// DeletePod stops inbound capture, then removes the pod.
func (t Tracking) DeletePod(cgroupID uint64) error {
	t.R.Delete(cgroupID)
	return t.PodMap.DeletePod(cgroupID)
}

// SyncPods syncs the map, then the wanted set (also after a partial
// failure: the pods it could write are in).
func (t Tracking) SyncPods(pods []policy.Pod) error {
	err := t.PodMap.SyncPods(pods)
	t.R.Set(pods)
	return err
}
