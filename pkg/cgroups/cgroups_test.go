package cgroups

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMounts(t *testing.T) {
	info := `25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 31 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
34 30 0:29 / /mnt/with\040space rw - cgroup2 cgroup2 rw
`
	got, err := parseMounts(strings.NewReader(info))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/sys/fs/cgroup/unified", "/mnt/with space"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("mounts = %q, want %q", got, want)
	}
}

func TestPickRoot(t *testing.T) {
	tests := []struct {
		mounts []string
		want   string
		err    error
	}{
		{[]string{"/sys/fs/cgroup"}, "/sys/fs/cgroup", nil},
		{[]string{"/run/x", "/sys/fs/cgroup/unified"}, "/sys/fs/cgroup/unified", nil},
		{[]string{"/run/x", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"}, "/sys/fs/cgroup", nil},
		{[]string{"/run/x"}, "/run/x", nil},
		{nil, "", ErrNoCgroup2},
	}
	for _, tt := range tests {
		got, err := pickRoot(tt.mounts)
		if !errors.Is(err, tt.err) || got != tt.want {
			t.Errorf("pickRoot(%q) = %q, %v; want %q, %v", tt.mounts, got, err, tt.want, tt.err)
		}
	}
}

func TestResolve(t *testing.T) {
	if got := Resolve("/sys/fs/cgroup", "kubepods/pod1"); got != "/sys/fs/cgroup/kubepods/pod1" {
		t.Errorf("relative: %s", got)
	}
	if got := Resolve("/sys/fs/cgroup", "/x/../y"); got != "/y" {
		t.Errorf("absolute: %s", got)
	}
}
