// Package cgroups finds the cgroup v2 hierarchy and names cgroups by the id
// the kernel's BPF helpers report (bpf_get_current_ancestor_cgroup_id).
//
// Kernel: cgroup v2 (4.5). A cgroup's id equals the inode number of its
// directory on 64-bit kernels since 5.5 (kernfs node id).
package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoCgroup2 means the host mounts no cgroup v2 hierarchy (a cgroup v1 only
// host), which sockbridge cannot attach to.
var ErrNoCgroup2 = errors.New("no cgroup v2 hierarchy mounted (cgroup v1 only hosts are unsupported)")

// Mounts returns every cgroup2 mount point in /proc/self/mountinfo, in order.
func Mounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	return parseMounts(f)
}

func parseMounts(r io.Reader) ([]string, error) {
	var mounts []string
	s := bufio.NewScanner(r)
	for s.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(s.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		if fields[sep+1] == "cgroup2" {
			mounts = append(mounts, unescapeMountPath(fields[4]))
		}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("parse mountinfo: %w", err)
	}
	return mounts, nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(p string) string {
	if !strings.Contains(p, `\`) {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '\\' && i+3 < len(p) {
			var v int
			if _, err := fmt.Sscanf(p[i+1:i+4], "%3o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// Root returns the cgroup v2 mount point: /sys/fs/cgroup on a unified host,
// /sys/fs/cgroup/unified on a hybrid one, or whichever cgroup2 mount comes
// first.
func Root() (string, error) {
	mounts, err := Mounts()
	if err != nil {
		return "", err
	}
	return pickRoot(mounts)
}

func pickRoot(mounts []string) (string, error) {
	if len(mounts) == 0 {
		return "", ErrNoCgroup2
	}
	for _, want := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		for _, m := range mounts {
			if m == want {
				return m, nil
			}
		}
	}
	return mounts[0], nil
}

// IsCgroup2 reports whether path lies on a cgroup v2 filesystem.
func IsCgroup2(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
}

// ID returns the id of the cgroup v2 directory at path.
func ID(path string) (uint64, error) {
	ok, err := IsCgroup2(path)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("%s is not on a cgroup v2 filesystem", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// Resolve makes a cgroup path absolute: a relative path is taken relative to
// root.
func Resolve(root, path string) string {
	if filepath.IsAbs(path) {
		return filepath.Clean(path)
	}
	return filepath.Join(root, path)
}

// RemoveTree removes the cgroup at path and every cgroup below it,
// bottom-up. A cgroup that stays busy is emptied through cgroup.kill
// (Linux 5.14) and retried for up to a second. Only for cgroups the caller
// created: whatever runs inside is killed.
func RemoveTree(path string) error {
	entries, err := os.ReadDir(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, RemoveTree(filepath.Join(path, e.Name())))
		}
	}
	for i := 0; ; i++ {
		err = os.Remove(path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return errors.Join(errs...)
		}
		if !errors.Is(err, syscall.EBUSY) || i == 100 {
			return errors.Join(append(errs, fmt.Errorf("remove cgroup %s: %w", path, err))...)
		}
		if i == 0 {
			os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
