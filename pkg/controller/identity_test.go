package controller

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// inode stands in for cgroups.ID on an ordinary file system.
func inode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return st.Ino, nil
}

func mkdirs(t *testing.T, root string, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestResolvePodCgroup(t *testing.T) {
	const uid = "1f2e3d4c-0000-4abc-8def-0123456789ab"
	const uidUnderscores = "1f2e3d4c_0000_4abc_8def_0123456789ab"
	tests := []struct {
		name string
		dirs []string // the pod's directory is the last one
		qos  corev1.PodQOSClass
	}{
		{"cgroupfs burstable", []string{"kubepods/burstable/pod" + uid}, corev1.PodQOSBurstable},
		{"cgroupfs besteffort", []string{"kubepods/besteffort/pod" + uid}, corev1.PodQOSBestEffort},
		{"cgroupfs guaranteed", []string{"kubepods/burstable", "kubepods/pod" + uid}, corev1.PodQOSGuaranteed},
		{"cgroupfs qos unknown", []string{"kubepods/besteffort/pod" + uid}, ""},
		{"systemd burstable", []string{"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidUnderscores + ".slice"}, corev1.PodQOSBurstable},
		{"systemd besteffort", []string{"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidUnderscores + ".slice"}, corev1.PodQOSBestEffort},
		{"systemd guaranteed", []string{"kubepods.slice/kubepods-pod" + uidUnderscores + ".slice"}, corev1.PodQOSGuaranteed},
		{"systemd qos wrong in status", []string{"kubepods.slice/kubepods-pod" + uidUnderscores + ".slice"}, corev1.PodQOSBestEffort},
		{"nested kubelet, cgroupfs", []string{"system.slice/containerd.service", "kubelet/kubepods/burstable/pod" + uid}, corev1.PodQOSBurstable},
		{"nested kubelet, systemd with cgroup-root (kind)", []string{
			"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidUnderscores + ".slice",
		}, corev1.PodQOSBestEffort},
		{"deeper nesting", []string{"a/b/c/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidUnderscores + ".slice"}, corev1.PodQOSBurstable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			mkdirs(t, root, tt.dirs...)
			want := filepath.Join(root, tt.dirs[len(tt.dirs)-1])
			r := newResolver(root, 4)
			r.id = inode
			path, id, err := r.resolve(types.UID(uid), tt.qos)
			if err != nil {
				t.Fatalf("resolve: %v", err)
			}
			wantID, _ := inode(want)
			if path != want || id != wantID {
				t.Errorf("resolve = %s (%d), want %s (%d)", path, id, want, wantID)
			}
		})
	}
}

func TestResolveMissingThenCreated(t *testing.T) {
	const uid = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
	root := t.TempDir()
	r := newResolver(root, 4)
	r.id = inode
	r.rescanEvery = 0
	if _, _, err := r.resolve(uid, corev1.PodQOSBurstable); !errors.Is(err, ErrCgroupNotFound) {
		t.Fatalf("no kubepods yet: err = %v, want ErrCgroupNotFound", err)
	}
	mkdirs(t, root, "kubepods/burstable")
	if _, _, err := r.resolve(uid, corev1.PodQOSBurstable); !errors.Is(err, ErrCgroupNotFound) {
		t.Fatalf("no pod cgroup yet: err = %v, want ErrCgroupNotFound", err)
	}
	mkdirs(t, root, "kubepods/burstable/pod"+uid)
	if _, _, err := r.resolve(uid, corev1.PodQOSBurstable); err != nil {
		t.Fatalf("pod cgroup created: %v", err)
	}
	// A base found later (the kubelet switched drivers) is found by a rescan.
	const uid2 = "ffffffff-bbbb-cccc-dddd-eeeeeeeeeeee"
	mkdirs(t, root, "kubepods.slice/kubepods-pod"+"ffffffff_bbbb_cccc_dddd_eeeeeeeeeeee"+".slice")
	if _, _, err := r.resolve(uid2, corev1.PodQOSGuaranteed); err != nil {
		t.Fatalf("second base: %v", err)
	}
}

func TestResolveDepthBound(t *testing.T) {
	const uid = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
	root := t.TempDir()
	mkdirs(t, root, "a/b/c/d/e/kubepods/burstable/pod"+uid)
	r := newResolver(root, 4)
	r.id = inode
	if _, _, err := r.resolve(uid, corev1.PodQOSBurstable); !errors.Is(err, ErrCgroupNotFound) {
		t.Fatalf("kubepods 6 levels deep: err = %v, want ErrCgroupNotFound", err)
	}
}

func TestPodCgroupPath(t *testing.T) {
	tests := []struct {
		driver string
		qos    corev1.PodQOSClass
		want   string
	}{
		{"cgroupfs", corev1.PodQOSBurstable, "kubepods/burstable/pod1-2"},
		{"cgroupfs", corev1.PodQOSBestEffort, "kubepods/besteffort/pod1-2"},
		{"cgroupfs", corev1.PodQOSGuaranteed, "kubepods/pod1-2"},
		{"systemd", corev1.PodQOSBurstable, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice"},
		{"systemd", corev1.PodQOSGuaranteed, "kubepods.slice/kubepods-pod1_2.slice"},
	}
	for _, tt := range tests {
		got, err := PodCgroupPath(tt.driver, "1-2", tt.qos)
		if err != nil || got != tt.want {
			t.Errorf("PodCgroupPath(%s, %s) = %q, %v; want %q", tt.driver, tt.qos, got, err, tt.want)
		}
	}
	if _, err := PodCgroupPath("docker", "1", ""); err == nil {
		t.Error("unknown driver accepted")
	}
}
