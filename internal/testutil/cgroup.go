package testutil

import (
	"os"
	"path/filepath"

	"github.com/sockbridge/sockbridge/pkg/cgroups"
)

// Cgroup creates the cgroup v2 directory parent/name (parent "" means a new
// directory under the detected cgroup2 root) and removes it at cleanup. Any
// process still inside, which can only be one the test started, is killed
// first through cgroup.kill.
func Cgroup(t TB, parent, name string) string {
	t.Helper()
	if parent == "" {
		root, err := cgroups.Root()
		if err != nil {
			t.Fatalf("find cgroup2 root: %v", err)
		}
		parent = root
	}
	path := filepath.Join(parent, name)
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatalf("create cgroup %s: %v", path, err)
	}
	track(path)
	t.Cleanup(func() { RemoveCgroup(path) })
	return path
}

// TestCgroup creates a uniquely named child of the cgroup2 root for one test.
func TestCgroup(t TB) string {
	t.Helper()
	return Cgroup(t, "", "sockbridge-test-"+RandomSuffix())
}

// RemoveCgroup removes a cgroup tree bottom-up, killing what is left in it.
func RemoveCgroup(path string) error { return cgroups.RemoveTree(path) }

// CgroupID returns the id of the cgroup at path or fails t.
func CgroupID(t TB, path string) uint64 {
	t.Helper()
	id, err := cgroups.ID(path)
	if err != nil {
		t.Fatalf("cgroup id: %v", err)
	}
	return id
}
