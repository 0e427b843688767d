package probe

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sockbridge/sockbridge/pkg/cgroups"
)

// CgroupPrefix starts the name of every temporary cgroup the probe creates.
const CgroupPrefix = "sockbridge-probe-"

// makeCgroup creates the child cgroup parent/name; an empty name means a
// unique CgroupPrefix name.
func makeCgroup(parent, name string) (string, error) {
	if name == "" {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("random cgroup name: %w", err)
		}
		name = CgroupPrefix + hex.EncodeToString(b[:])
	}
	path := filepath.Join(parent, name)
	if err := os.Mkdir(path, 0o755); err != nil {
		return "", fmt.Errorf("create temporary cgroup: %w", err)
	}
	return path, nil
}

// removeCgroup removes a cgroup tree the probe created, bottom-up. A
// process still inside can only be a self-test helper; it is killed.
func removeCgroup(path string) error {
	if err := cgroups.RemoveTree(path); err != nil {
		return fmt.Errorf("remove temporary cgroup: %w", err)
	}
	return nil
}
