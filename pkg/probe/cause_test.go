package probe

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Each kind of cause, injected as the error a check returns, gives its own
// cause and a line that names it; only an old kernel is told it needs a
// newer Linux.
func TestCauses(t *testing.T) {
	notSupported := fmt.Errorf("detect support for sk_msg: %w", ebpf.ErrNotSupported)
	tests := []struct {
		name      string
		release   string
		lockdown  string
		err       error
		cause     Cause
		line      string // substring of the plan/err line
		needsSays bool   // the agent's error says "needs Linux X or later"
	}{
		{"old kernel", "5.10.0-8-amd64", "", notSupported, CauseOldKernel, "needs Linux 5.15 or later", true},
		{"new kernel without it", "6.18.44-fc", "", notSupported, CauseKernelConfig, "disabled in the kernel config", false},
		{"same release without it", "5.15.0", "", notSupported, CauseKernelConfig, "disabled in the kernel config", false},
		{"unparsable release", "weird", "", notSupported, CauseKernelConfig, "disabled in the kernel config", false},
		{"permission", "6.18.0", "", fmt.Errorf("load program: %w", unix.EPERM), CausePermission, "permission denied", false},
		{"access", "6.18.0", "none", fmt.Errorf("load program: %w", unix.EACCES), CausePermission, "permission denied", false},
		{"lockdown", "6.18.0", "confidentiality", fmt.Errorf("load program: %w", unix.EPERM), CauseLockdown, "kernel lockdown", false},
		{"probe failed", "6.18.0", "", errors.New("create map: cannot allocate memory"), CauseProbeFailed, "probe failed: create map: cannot allocate memory", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := allSupported()
			r.KernelRelease = tc.release
			for i := range r.Features {
				f := &r.Features[i]
				if f.Name == "bpf_get_netns_cookie@sock_ops" {
					*f = result(*f, tc.err)
				}
			}
			classifyAll(r.Features, env{release: tc.release, lockdown: tc.lockdown})
			f, _ := r.Feature("bpf_get_netns_cookie@sock_ops")
			if f.Supported || f.Cause != tc.cause {
				t.Fatalf("cause %q (supported %v), want %q", f.Cause, f.Supported, tc.cause)
			}
			err := r.Err()
			if err == nil {
				t.Fatal("no error for a missing essential")
			}
			if !strings.Contains(err.Error(), tc.line) {
				t.Errorf("error %q does not say %q", err, tc.line)
			}
			if says := strings.Contains(err.Error(), "or later"); says != tc.needsSays {
				t.Errorf("error %q: says \"or later\" = %v, want %v", err, says, tc.needsSays)
			}
			if plan := strings.Join(r.Plan().Reasons, "; "); !strings.Contains(plan, tc.line) {
				t.Errorf("plan %q does not say %q", plan, tc.line)
			}
		})
	}
}

// A self-test failure and a feature turned off on request keep their own
// causes.
func TestCausesSelfTestAndDisabled(t *testing.T) {
	r := allSupported()
	for i := range r.Features {
		if r.Features[i].Name == "selftest/splice" {
			r.Features[i] = result(r.Features[i], errors.New("receiver's FIONREAD reports 0 bytes queued"))
		}
	}
	r = r.Without("sk_msg")
	classifyAll(r.Features, env{release: "6.1.0"})
	if f, _ := r.Feature("selftest/splice"); f.Cause != CauseSelfTestFailed {
		t.Errorf("selftest cause %q", f.Cause)
	}
	if f, _ := r.Feature("sk_msg"); f.Cause != CauseDisabled {
		t.Errorf("disabled cause %q", f.Cause)
	}
	plan := strings.Join(r.Plan().Reasons, "; ")
	for _, want := range []string{"splice self-test failed: receiver's FIONREAD", "sk_msg program type turned off on request"} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan %q does not say %q", plan, want)
		}
	}
	if strings.Contains(plan, "Linux") {
		t.Errorf("plan %q blames the kernel version", plan)
	}
}

func TestParseRelease(t *testing.T) {
	for in, want := range map[string][2]int{"6.1.0-47-cloud-amd64": {6, 1}, "6.18.44-fc-v1045": {6, 18}, "5.15": {5, 15}} {
		got, ok := parseRelease(in)
		if !ok || got != want {
			t.Errorf("parseRelease(%q) = %v, %v", in, got, ok)
		}
	}
	if _, ok := parseRelease("x"); ok {
		t.Error("parsed x")
	}
	if older("6.18.0", "5.15") || !older("5.10.1", "5.15") || older("5.15.3", "5.15") {
		t.Error("older")
	}
}
