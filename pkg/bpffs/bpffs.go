// Package bpffs finds, checks and mounts the BPF filesystem the datapath pins
// its maps and links on.
//
// Kernel: bpffs 4.4. A fresh node often has it unmounted (systemd mounts it,
// a minimal image does not); Mount mounts it at /sys/fs/bpf as Cilium's agent
// does. That needs CAP_SYS_ADMIN in the initial mount namespace, or the
// host's /sys/fs/bpf bind-mounted into the container (the DaemonSet does).
package bpffs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Root is where bpffs is mounted on a node.
const Root = "/sys/fs/bpf"

// State is what a directory's bpffs status is.
type State int

// The states Check reports.
const (
	// Mounted: the directory is on bpffs.
	Mounted State = iota
	// Mountable: nothing is mounted at Root yet, the kernel has bpffs,
	// and the directory lies at or below Root: Mount will mount it.
	Mountable
	// NotBPFFS: the directory is on another filesystem that Mount will not
	// replace.
	NotBPFFS
	// NoKernelSupport: the kernel has no bpf filesystem (not in
	// /proc/filesystems: CONFIG_BPF_SYSCALL off).
	NoKernelSupport
)

// Status is the result of Check.
type Status struct {
	State State
	// Detail says what was found, in one line.
	Detail string
}

// Is reports whether path is on a bpf filesystem.
func Is(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BPF_FS_MAGIC, nil
}

// KernelHas reports whether the running kernel has the bpf filesystem,
// from /proc/filesystems.
func KernelHas() (bool, error) {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false, fmt.Errorf("read /proc/filesystems: %w", err)
	}
	defer f.Close()
	return hasFilesystem(f, "bpf")
}

func hasFilesystem(f io.Reader, name string) (bool, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 && fields[len(fields)-1] == name {
			return true, nil
		}
	}
	return false, sc.Err()
}

// Check says whether dir (a pin directory, which need not exist yet) is on
// bpffs, or will be once Mount has run.
func Check(dir string) Status {
	return host{is: Is, kernelHas: KernelHas}.check(dir)
}

// host is what Check reads from the machine, injectable for tests.
type host struct {
	is        func(path string) (bool, error)
	kernelHas func() (bool, error)
}

func (h host) check(dir string) Status {
	dir = filepath.Clean(dir)
	if ok, _ := h.is(existingAncestor(dir)); ok {
		return Status{Mounted, "mounted at " + h.mountPointOf(dir)}
	}
	has, err := h.kernelHas()
	switch {
	case err != nil:
		return Status{NoKernelSupport, err.Error()}
	case !has:
		return Status{NoKernelSupport, "this kernel has no bpf filesystem (bpf not in /proc/filesystems: kernel built without CONFIG_BPF_SYSCALL)"}
	}
	if within(dir, Root) {
		if ok, _ := h.is(Root); !ok {
			return Status{Mountable, fmt.Sprintf("not mounted at %s; the agent mounts it", Root)}
		}
	}
	return Status{NotBPFFS, fmt.Sprintf("%s is not on a bpf filesystem (mount -t bpf bpf <dir>, or pin below %s)", dir, Root)}
}

// Mount mounts bpffs at Root when dir lies below Root and nothing is mounted
// there yet; it does nothing when dir is already on bpffs.
func Mount(dir string) error {
	dir = filepath.Clean(dir)
	if ok, _ := Is(existingAncestor(dir)); ok {
		return nil
	}
	if !within(dir, Root) {
		return fmt.Errorf("%s is not on a bpf filesystem (mount -t bpf bpf <dir>, or pin below %s)", dir, Root)
	}
	if err := os.MkdirAll(Root, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", Root, err)
	}
	if err := unix.Mount("bpf", Root, "bpf", 0, "mode=0700"); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("mount bpffs at %s: %w (needs CAP_SYS_ADMIN; in a container, bind-mount the host's %s)", Root, err, Root)
		}
		return fmt.Errorf("mount bpffs at %s: %w", Root, err)
	}
	return nil
}

// within reports whether dir is root or lies below it.
func within(dir, root string) bool {
	return dir == root || strings.HasPrefix(dir, root+"/")
}

// existingAncestor returns dir or its nearest existing ancestor.
func existingAncestor(dir string) string {
	for {
		if _, err := os.Stat(dir); err == nil || dir == "/" {
			return dir
		}
		dir = filepath.Dir(dir)
	}
}

// mountPointOf returns the highest existing ancestor of dir that is still on
// bpffs, which is its mount point.
func (h host) mountPointOf(dir string) string {
	p := existingAncestor(dir)
	for p != "/" {
		parent := filepath.Dir(p)
		if ok, _ := h.is(parent); !ok {
			return p
		}
		p = parent
	}
	return p
}
