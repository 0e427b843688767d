package probe

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
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
// process still inside can only be a self-test helper; cgroup.kill (5.14)
// ends it.
func removeCgroup(path string) error {
	entries, err := os.ReadDir(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, removeCgroup(filepath.Join(path, e.Name())))
		}
	}
	for i := 0; ; i++ {
		err = os.Remove(path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return errors.Join(errs...)
		}
		if !errors.Is(err, syscall.EBUSY) || i == 100 {
			return errors.Join(append(errs, fmt.Errorf("remove temporary cgroup: %w", err))...)
		}
		if i == 0 {
			os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
