package bpffs

import (
	"errors"
	"strings"
	"testing"
)

// The probe tells "not mounted; the agent mounts it" (fine) apart from "no
// bpffs in this kernel" and "pinned on another filesystem" (fatal).
func TestCheck(t *testing.T) {
	onBPFFS := func(paths ...string) func(string) (bool, error) {
		return func(p string) (bool, error) {
			for _, q := range paths {
				if q == "/" || p == q || strings.HasPrefix(p, q+"/") {
					return true, nil
				}
			}
			return false, nil
		}
	}
	yes := func() (bool, error) { return true, nil }
	no := func() (bool, error) { return false, nil }
	broken := func() (bool, error) { return false, errors.New("read /proc/filesystems: permission denied") }
	tests := []struct {
		name   string
		h      host
		dir    string
		state  State
		detail string
	}{
		{"mounted", host{onBPFFS(Root), yes}, Root + "/sockbridge", Mounted, "mounted at"},
		{"fresh node", host{onBPFFS(), yes}, Root + "/sockbridge", Mountable, "not mounted at /sys/fs/bpf; the agent mounts it"},
		{"no bpffs in the kernel", host{onBPFFS(), no}, Root + "/sockbridge", NoKernelSupport, "CONFIG_BPF_SYSCALL"},
		{"unreadable filesystems", host{onBPFFS(), broken}, Root + "/sockbridge", NoKernelSupport, "permission denied"},
		{"elsewhere, not bpffs", host{onBPFFS(), yes}, "/var/run/pins", NotBPFFS, "/var/run/pins is not on a bpf filesystem"},
		{"elsewhere on bpffs", host{onBPFFS("/"), yes}, "/var/run/pins", Mounted, "mounted at"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := tc.h.check(tc.dir)
			if st.State != tc.state || !strings.Contains(st.Detail, tc.detail) {
				t.Errorf("check(%s) = %+v, want state %d with %q", tc.dir, st, tc.state, tc.detail)
			}
		})
	}
}

func TestHasFilesystem(t *testing.T) {
	const list = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\tbpf\n"
	for name, want := range map[string]bool{"bpf": true, "ext4": true, "cgroup2": false, "bp": false} {
		got, err := hasFilesystem(strings.NewReader(list), name)
		if err != nil || got != want {
			t.Errorf("hasFilesystem(%q) = %v, %v", name, got, err)
		}
	}
}

// On this machine: /proc/filesystems is readable and a tmpfs directory is
// not bpffs.
func TestCheckHost(t *testing.T) {
	if _, err := KernelHas(); err != nil {
		t.Fatal(err)
	}
	if st := Check(t.TempDir()); st.State == Mounted {
		t.Errorf("a temporary directory is reported on bpffs: %+v", st)
	}
	if err := Mount(t.TempDir()); err == nil {
		t.Error("Mount accepted a directory outside /sys/fs/bpf")
	}
}
