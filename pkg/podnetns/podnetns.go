// Package podnetns finds a pod's network namespace from its pod-level
// cgroup, without a CNI plugin and without the container runtime: every
// process of the pod (the sandbox's pause process first) lies in the pod
// cgroup or below it, and /proc/PID/ns/net of any of them is the pod's
// namespace.
//
// Why not the CRI: the cgroup is the identity the datapath already keys
// pods by, /proc needs no runtime socket or runtime-specific client, and
// it works the same for containerd, CRI-O and a static pod list. It needs
// the host's PID namespace (DaemonSet hostPID: true) to see the pods'
// processes, and CAP_SYS_PTRACE (or root) to open their namespace files.
package podnetns

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoProcess means no process lives in the pod cgroup yet (the sandbox
// has not started) or any more.
var ErrNoProcess = errors.New("no process in the pod cgroup")

// ErrHostNetns means the pod's processes share the node's own network
// namespace (a hostNetwork pod): there is no pod namespace to capture in.
var ErrHostNetns = errors.New("the pod runs in the node's network namespace (hostNetwork)")

// Namespace is a pod's network namespace as a process of the pod holds it.
type Namespace struct {
	// Path is /proc/PID/ns/net of a process of the pod.
	Path string
	// Inode identifies the namespace (net:[Inode]).
	Inode uint64
	PID   int
}

// Find returns the network namespace of the pod whose pod-level cgroup is
// cgroupPath: that of the first process found in it or below it (breadth
// first) whose namespace is not the node's. Processes that exit meanwhile
// are skipped. It fails with ErrNoProcess when the cgroup has no process
// yet, ErrHostNetns when every process is in the node's namespace, and an
// error naming both when processes of the pod sit in two different
// non-node namespaces.
func Find(cgroupPath string) (Namespace, error) {
	return FindFrom("/proc", cgroupPath)
}

// FindFrom is Find with the proc filesystem at procDir.
func FindFrom(procDir, cgroupPath string) (Namespace, error) {
	host, err := inode(filepath.Join(procDir, "self/ns/net"))
	if err != nil {
		return Namespace{}, fmt.Errorf("the node's network namespace: %w", err)
	}
	var (
		found   Namespace
		sawHost bool
	)
	queue := []string{cgroupPath}
	for len(queue) > 0 {
		dir := queue[0]
		queue = queue[1:]
		pids, err := readPIDs(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && dir != cgroupPath {
				continue // removed meanwhile
			}
			return Namespace{}, fmt.Errorf("pod cgroup %s: %w", dir, err)
		}
		for _, pid := range pids {
			path := filepath.Join(procDir, strconv.Itoa(pid), "ns/net")
			ino, err := inode(path)
			if err != nil {
				continue // exited meanwhile
			}
			if ino == host {
				sawHost = true
				continue
			}
			if found.Path == "" {
				found = Namespace{Path: path, Inode: ino, PID: pid}
			} else if found.Inode != ino {
				return Namespace{}, fmt.Errorf("pod cgroup %s: processes %d and %d are in different network namespaces (%d, %d)", cgroupPath, found.PID, pid, found.Inode, ino)
			}
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() {
				queue = append(queue, filepath.Join(dir, e.Name()))
			}
		}
	}
	switch {
	case found.Path != "":
		return found, nil
	case sawHost:
		return Namespace{}, fmt.Errorf("pod cgroup %s: %w", cgroupPath, ErrHostNetns)
	}
	return Namespace{}, fmt.Errorf("pod cgroup %s: %w", cgroupPath, ErrNoProcess)
}

func readPIDs(path string) ([]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pids []int
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" {
			continue
		}
		pid, err := strconv.Atoi(line)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a PID", path, line)
		}
		pids = append(pids, pid)
	}
	return pids, s.Err()
}

func inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// PIDs lists the processes in the pod cgroup at cgroupPath and below it.
// Cgroups removed meanwhile are skipped.
func PIDs(cgroupPath string) ([]int, error) {
	var pids []int
	queue := []string{cgroupPath}
	for len(queue) > 0 {
		dir := queue[0]
		queue = queue[1:]
		p, err := readPIDs(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && dir != cgroupPath {
				continue
			}
			return nil, fmt.Errorf("pod cgroup %s: %w", dir, err)
		}
		pids = append(pids, p...)
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() {
				queue = append(queue, filepath.Join(dir, e.Name()))
			}
		}
	}
	return pids, nil
}
