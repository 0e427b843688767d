package podfile

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in, err string
		pods          int
	}{
		{"ok", `{"pods":[{"name":"a","cgroup":"x","ip":"10.0.0.1"},{"name":"b","cgroup":"y","capture":false}]}`, "", 2},
		{"empty", `{"pods":[]}`, "", 0},
		{"unknown field", `{"pods":[{"name":"a","cgroups":"x"}]}`, `unknown field "cgroups"`, 0},
		{"not json", `pods: []`, "decode pod file", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Pods) != tt.pods {
				t.Fatalf("%d pods, want %d", len(f.Pods), tt.pods)
			}
		})
	}
}

func TestResolveKeepsGoodEntries(t *testing.T) {
	root := t.TempDir() // not cgroup2: every cgroup lookup fails
	f := &File{Pods: []Entry{
		{Name: "no-cgroup"},
		{Name: "bad-ip", Cgroup: "x", IP: "nope"},
		{Name: "not-cgroup2", Cgroup: root},
	}}
	pods, err := f.Resolve(root)
	if len(pods) != 0 {
		t.Fatalf("pods = %v", pods)
	}
	for _, want := range []string{"pod no-cgroup: \"cgroup\" is empty", "pod not-cgroup2", "not on a cgroup v2"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
}
