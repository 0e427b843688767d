package podnetns

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeProc builds a proc directory whose ns/net files are plain files: a
// hard link shares the inode (the same namespace), a new file does not.
func fakeProc(t *testing.T, netns map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{} // namespace name -> first file
	for _, pid := range []string{"self", "10", "11", "20", "30"} {
		ns, ok := netns[pid]
		if !ok {
			continue
		}
		p := filepath.Join(dir, pid, "ns", "net")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if first, ok := files[ns]; ok {
			if err := os.Link(first, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		files[ns] = p
	}
	return dir
}

func cgroupTree(t *testing.T, procs map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for rel, pids := range procs {
		d := filepath.Join(root, rel)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(pids), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestFind(t *testing.T) {
	tests := []struct {
		name  string
		netns map[string]string
		procs map[string]string
		pid   int
		err   error
		msg   string
	}{
		{"sandbox below the pod cgroup", map[string]string{"self": "host", "10": "pod"},
			map[string]string{".": "", "sandbox": "10\n", "app": ""}, 10, nil, ""},
		{"a process in the host netns is skipped", map[string]string{"self": "host", "10": "host", "11": "pod"},
			map[string]string{".": "", "a": "10\n", "b": "11\n"}, 11, nil, ""},
		{"no process yet", map[string]string{"self": "host"},
			map[string]string{".": "", "app": ""}, 0, ErrNoProcess, ""},
		{"exited process", map[string]string{"self": "host"},
			map[string]string{".": "20\n"}, 0, ErrNoProcess, ""},
		{"hostNetwork pod", map[string]string{"self": "host", "10": "host", "11": "host"},
			map[string]string{".": "10\n11\n"}, 0, ErrHostNetns, ""},
		{"two namespaces", map[string]string{"self": "host", "10": "a", "11": "b"},
			map[string]string{".": "10\n", "x": "11\n"}, 0, nil, "different network namespaces"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc := fakeProc(t, tt.netns)
			cg := cgroupTree(t, tt.procs)
			ns, err := FindFrom(proc, cg)
			switch {
			case tt.err != nil:
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
			case tt.msg != "":
				if err == nil || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("err = %v, want %q", err, tt.msg)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if ns.PID != tt.pid || ns.Path != filepath.Join(proc, "10", "ns", "net") && tt.pid == 10 {
					t.Errorf("found %+v, want pid %d", ns, tt.pid)
				}
			}
		})
	}
	if _, err := FindFrom(fakeProc(t, map[string]string{"self": "host"}), "/nonexistent-cgroup"); err == nil || errors.Is(err, ErrNoProcess) {
		t.Errorf("missing pod cgroup: err = %v, want a read error", err)
	}
}
