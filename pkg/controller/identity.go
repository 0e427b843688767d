package controller

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sockbridge/sockbridge/pkg/cgroups"
)

// ErrCgroupNotFound means the pod's cgroup does not exist (yet): the kubelet
// creates it when it starts the pod's sandbox, which can be after the pod is
// bound to the node. The controller retries such pods.
var ErrCgroupNotFound = errors.New("pod cgroup not found")

// Kubelet cgroup drivers.
const (
	driverCgroupfs = "cgroupfs"
	driverSystemd  = "systemd"
)

// base is a directory holding the kubelet's pod cgroups: "kubepods" of the
// cgroupfs driver or "kubepods.slice" of the systemd driver (with a prefix
// when the kubelet runs with --cgroup-root, e.g. "kubelet-kubepods.slice").
type base struct {
	path   string
	driver string
	// slice is the systemd unit prefix the pod slices share, e.g.
	// "kubepods" or "kubelet-kubepods"; empty for cgroupfs.
	slice string
}

// resolver finds the cgroup of a pod under a cgroup v2 directory, for both
// kubelet cgroup drivers, and for a kubelet nested a few levels below that
// directory (kind, a kubelet in a container with its own cgroup namespace).
// The directories holding pod cgroups are searched once and cached; a
// missing pod triggers a new search at most every rescanEvery.
type resolver struct {
	root        string
	maxDepth    int
	rescanEvery time.Duration
	// id returns a cgroup directory's id (cgroups.ID; tests replace it).
	id func(path string) (uint64, error)

	mu       sync.Mutex
	bases    []base
	searched time.Time
}

func newResolver(root string, maxDepth int) *resolver {
	return &resolver{root: root, maxDepth: maxDepth, rescanEvery: 2 * time.Second, id: cgroups.ID}
}

// resolve returns the path and id of the pod-level cgroup of pod, or an
// error wrapping ErrCgroupNotFound.
func (r *resolver) resolve(uid types.UID, qos corev1.PodQOSClass) (string, uint64, error) {
	if uid == "" {
		return "", 0, fmt.Errorf("pod has no uid: %w", ErrCgroupNotFound)
	}
	for attempt := 0; attempt < 2; attempt++ {
		bases, err := r.basesFor(attempt > 0)
		if err != nil {
			return "", 0, err
		}
		for _, b := range bases {
			for _, p := range b.podPaths(string(uid), qos) {
				id, err := r.id(p)
				if err == nil {
					return p, id, nil
				}
				if !errors.Is(err, fs.ErrNotExist) {
					return "", 0, fmt.Errorf("pod cgroup %s: %w", p, err)
				}
			}
		}
	}
	return "", 0, fmt.Errorf("no cgroup for pod %s below %s (kubepods or kubepods.slice): %w", uid, r.root, ErrCgroupNotFound)
}

// basesFor returns the cached base directories, searching again when there
// are none or when rescan is set and the last search is old enough.
func (r *resolver) basesFor(rescan bool) ([]base, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bases) > 0 && !rescan {
		return r.bases, nil
	}
	if !r.searched.IsZero() && time.Since(r.searched) < r.rescanEvery {
		return r.bases, nil
	}
	bases, err := findBases(r.root, r.maxDepth)
	r.searched = time.Now()
	if err != nil {
		return nil, err
	}
	r.bases = bases
	return bases, nil
}

// findBases walks root breadth-first, at most maxDepth levels deep, and
// returns every kubelet pod directory it finds, shallowest first. It does
// not descend into a base it found.
func findBases(root string, maxDepth int) ([]base, error) {
	if _, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("cgroup root: %w", err)
	}
	var found []base
	level := []string{root}
	for depth := 0; depth <= maxDepth && len(level) > 0; depth++ {
		var next []string
		for _, dir := range level {
			if b, ok := baseOf(dir); ok {
				found = append(found, b)
				continue
			}
			if depth == maxDepth {
				continue
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				continue // removed meanwhile, or unreadable: not ours
			}
			for _, e := range entries {
				if e.IsDir() {
					next = append(next, filepath.Join(dir, e.Name()))
				}
			}
		}
		level = next
	}
	return found, nil
}

// baseOf tells whether dir is a kubelet pod directory by its name.
func baseOf(dir string) (base, bool) {
	name := filepath.Base(dir)
	switch {
	case name == "kubepods":
		return base{path: dir, driver: driverCgroupfs}, true
	case name == "kubepods.slice" || strings.HasSuffix(name, "-kubepods.slice"):
		return base{path: dir, driver: driverSystemd, slice: strings.TrimSuffix(name, ".slice")}, true
	}
	return base{}, false
}

// qosOrder lists the QoS directories to try, the pod's own class first.
// Guaranteed pods live directly in the base directory ("").
func qosOrder(qos corev1.PodQOSClass) []string {
	switch qos {
	case corev1.PodQOSGuaranteed:
		return []string{"", "burstable", "besteffort"}
	case corev1.PodQOSBestEffort:
		return []string{"besteffort", "burstable", ""}
	default:
		return []string{"burstable", "besteffort", ""}
	}
}

// podPaths lists where the kubelet puts the pod's cgroup under b:
//
//	cgroupfs: kubepods/<qos>/pod<uid>, guaranteed kubepods/pod<uid>
//	systemd:  kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice,
//	          guaranteed kubepods.slice/kubepods-pod<uid_>.slice
//
// where uid_ is the UID with '-' replaced by '_' (systemd reserves '-' as
// its hierarchy separator).
func (b base) podPaths(uid string, qos corev1.PodQOSClass) []string {
	order := qosOrder(qos)
	paths := make([]string, 0, len(order))
	for _, class := range order {
		switch b.driver {
		case driverCgroupfs:
			paths = append(paths, filepath.Join(b.path, class, "pod"+uid))
		case driverSystemd:
			u := strings.ReplaceAll(uid, "-", "_")
			if class == "" {
				paths = append(paths, filepath.Join(b.path, b.slice+"-pod"+u+".slice"))
			} else {
				paths = append(paths, filepath.Join(b.path, b.slice+"-"+class+".slice", b.slice+"-"+class+"-pod"+u+".slice"))
			}
		}
	}
	return paths
}

// PodCgroupPath returns where a kubelet with the given cgroup driver
// ("cgroupfs" or "systemd") and no --cgroup-root creates the cgroup of a pod,
// relative to the cgroup v2 root. Tests use it to create the cgroups a
// kubelet would.
func PodCgroupPath(driver string, uid types.UID, qos corev1.PodQOSClass) (string, error) {
	var b base
	switch driver {
	case driverCgroupfs:
		b = base{path: "kubepods", driver: driverCgroupfs}
	case driverSystemd:
		b = base{path: "kubepods.slice", driver: driverSystemd, slice: "kubepods"}
	default:
		return "", fmt.Errorf("cgroup driver %q unknown (valid: cgroupfs, systemd)", driver)
	}
	return b.podPaths(string(uid), qos)[0], nil
}
