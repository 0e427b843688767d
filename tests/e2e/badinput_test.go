package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockbridge/sockbridge/internal/testutil"
	"github.com/sockbridge/sockbridge/pkg/datapath"
)

// Bad command lines fail before anything is loaded or pinned: a proxy
// identity of root (which would exempt every root process from capture)
// and a kubeconfig that cannot be used.
func TestBadInputFailsBeforePinning(t *testing.T) {
	testutil.RequirePrivileged(t, "bpftool")
	cg := testutil.TestCgroup(t)
	garbage := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(garbage, []byte("{not: [a kubeconfig"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		says string
	}{
		{"proxy uid 0", []string{"--pods-file", "/nonexistent", "--proxy-uid=0"}, 2, "proxy uid 0"},
		{"proxy gid 0", []string{"--pods-file", "/nonexistent", "--proxy-gid=0"}, 2, "proxy gid 0"},
		{"missing kubeconfig", []string{"--node-name", "node-a", "--kubeconfig", "/nonexistent/kubeconfig"}, 1, "/nonexistent/kubeconfig"},
		{"garbage kubeconfig", []string{"--node-name", "node-a", "--kubeconfig", garbage}, 1, "kubernetes client config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pinDir := testutil.PinDir(t)
			t.Cleanup(func() { datapath.Uninstall(pinDir) })
			args := append([]string{"agent", "--cgroup", cg, "--bpffs-dir", pinDir}, tc.args...)
			out, err := exec.Command(bin.sockbridge, args...).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tc.code || !strings.Contains(string(out), tc.says) {
				t.Errorf("sockbridge %s: %v, want exit code %d saying %q:\n%s", strings.Join(args, " "), err, tc.code, tc.says, out)
			}
			if _, err := os.Stat(pinDir); !os.IsNotExist(err) {
				t.Errorf("pin directory %s exists after a refused start (%v)", pinDir, err)
			}
			if progs := attachedPrograms(t, cg); len(progs) != 0 {
				t.Errorf("programs attached after a refused start: %v", progs)
			}
		})
	}
}

// `sockbridge uninstall --bpffs-dir` removes only what sockbridge pins: it
// refuses a directory off bpffs, the bpffs mount point, and a directory
// holding another tool's pins, removing nothing in each case. The bpffs
// here is a private instance mounted by the test, never the machine's.
func TestUninstallRefusesForeignDirectories(t *testing.T) {
	testutil.RequirePrivileged(t)
	uninstall := func(dir string) (string, error) {
		out, err := exec.Command(bin.sockbridge, "uninstall", "--bpffs-dir", dir).CombinedOutput()
		return string(out), err
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }

	plain := t.TempDir()
	victim := filepath.Join(plain, "sb_pods")
	if err := os.WriteFile(victim, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := uninstall(plain); err == nil || !strings.Contains(out, "not on bpffs") || !exists(victim) {
		t.Errorf("uninstall of a directory off bpffs: %v, %q; file kept: %v", err, out, exists(victim))
	}

	mnt := t.TempDir()
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		testutil.Unavailable(t, "mount a private bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	pin := func(path string) {
		t.Helper()
		m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sbtest", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := m.Pin(path); err != nil {
			t.Fatal(err)
		}
	}
	foreign := filepath.Join(mnt, "tc", "globals", "cilium_lb4")
	pin(foreign)
	mixed := filepath.Join(mnt, "mixed")
	pin(filepath.Join(mixed, "sb_pods"))
	pin(filepath.Join(mixed, "cilium_ct4"))
	ours := filepath.Join(mnt, "ours")
	pin(filepath.Join(ours, "sb_pods"))
	if err := os.MkdirAll(filepath.Join(ours, "links"), 0o700); err != nil {
		t.Fatal(err)
	}

	if out, err := uninstall(mnt); err == nil || !strings.Contains(out, "mount point") || !exists(foreign) {
		t.Errorf("uninstall of the bpffs mount point: %v, %q; other pins kept: %v", err, out, exists(foreign))
	}
	if out, err := uninstall(filepath.Join(mnt, "tc")); err == nil || !strings.Contains(out, "does not pin") || !exists(foreign) {
		t.Errorf("uninstall of another tool's directory: %v, %q; its pins kept: %v", err, out, exists(foreign))
	}
	if out, err := uninstall(mixed); err == nil || !strings.Contains(out, "cilium_ct4") ||
		!exists(filepath.Join(mixed, "cilium_ct4")) || !exists(filepath.Join(mixed, "sb_pods")) {
		t.Errorf("uninstall of a directory with a foreign pin: %v, %q; nothing may be removed", err, out)
	}
	if out, err := uninstall(ours); err != nil || exists(ours) {
		t.Errorf("uninstall of a sockbridge directory: %v, %q; still there: %v", err, out, exists(ours))
	}
	if !exists(foreign) {
		t.Error("another tool's pin disappeared")
	}
}
