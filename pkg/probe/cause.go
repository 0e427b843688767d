package probe

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Cause says why a feature is unsupported, so that no line blames the
// kernel's age on a kernel that is new enough.
type Cause string

// The causes of an unsupported feature.
const (
	// CauseOldKernel: the kernel says it does not support the feature and
	// its release is older than the one that introduced it.
	CauseOldKernel Cause = "old_kernel"
	// CauseKernelConfig: the kernel says it does not support the feature
	// although its release is new enough: the feature is compiled out or
	// disabled by the vendor (kernel config).
	CauseKernelConfig Cause = "kernel_config"
	// CauseLockdown: the kernel refused (EPERM) while kernel lockdown is
	// in effect.
	CauseLockdown Cause = "lockdown"
	// CausePermission: the kernel refused with EPERM or EACCES: a missing
	// capability, a seccomp or LSM policy, or unprivileged BPF disabled.
	CausePermission Cause = "permission"
	// CauseNotMounted: a filesystem the feature needs is not mounted.
	CauseNotMounted Cause = "not_mounted"
	// CauseProbeFailed: the probe itself failed with an error other than
	// "not supported"; the feature may well be there.
	CauseProbeFailed Cause = "probe_failed"
	// CauseSelfTestFailed: the feature exists but misbehaved in its
	// functional self-test.
	CauseSelfTestFailed Cause = "selftest_failed"
	// CauseDisabled: turned off on request (--disable-feature, --without).
	CauseDisabled Cause = "disabled"
)

// env is what classification reads from the host, injectable for tests.
type env struct {
	release  string // uname -r
	lockdown string // the active mode in /sys/kernel/security/lockdown, "" or "none" when off
}

func hostEnv(release string) env {
	return env{release: release, lockdown: readLockdown()}
}

// readLockdown returns the active lockdown mode ("none", "integrity",
// "confidentiality"), or "" when the kernel has no lockdown LSM or
// securityfs is not mounted.
func readLockdown() string {
	b, err := os.ReadFile("/sys/kernel/security/lockdown")
	if err != nil {
		return ""
	}
	// "none [integrity] confidentiality": the active one is bracketed.
	s := string(b)
	if i := strings.IndexByte(s, '['); i >= 0 {
		if j := strings.IndexByte(s[i:], ']'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return ""
}

// classify sets f.Cause from err, the error the feature's check returned.
func classify(f *Feature, err error, e env) {
	switch {
	case err == nil:
		return
	case errors.Is(err, ebpf.ErrNotSupported):
		if older(e.release, f.MinKernel) {
			f.Cause = CauseOldKernel
		} else {
			f.Cause = CauseKernelConfig
		}
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, os.ErrPermission):
		if e.lockdown != "" && e.lockdown != "none" {
			f.Cause = CauseLockdown
		} else {
			f.Cause = CausePermission
		}
	default:
		f.Cause = CauseProbeFailed
	}
}

// older reports whether release is older than minKernel ("5.15"); false
// when either does not parse, so that an unknown version never becomes a
// "needs Linux X" claim.
func older(release, minKernel string) bool {
	have, ok1 := parseRelease(release)
	want, ok2 := parseKernel(minKernel)
	if !ok1 || !ok2 {
		return false
	}
	return have[0] < want[0] || have[0] == want[0] && have[1] < want[1]
}

// parseRelease parses the "major.minor" at the start of a uname release
// ("6.1.0-47-cloud-amd64").
func parseRelease(r string) ([2]int, bool) {
	maj, rest, ok := strings.Cut(r, ".")
	if !ok {
		return [2]int{}, false
	}
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	return parseKernel(maj + "." + rest[:end])
}

// Reason says why an unsupported feature is off, in words an operator can
// act on ("probe failed: ...", "permission denied ...").
func (f Feature) Reason() string { return reason(f) }

// Result is the one-word result the probe's table shows for f.
func (f Feature) Result() string {
	if f.Supported {
		return "ok"
	}
	switch f.Cause {
	case CauseLockdown:
		return "LOCKDOWN"
	case CausePermission:
		return "DENIED"
	case CauseNotMounted:
		return "NOT MOUNTED"
	case CauseProbeFailed:
		return "PROBE FAILED"
	case CauseSelfTestFailed:
		return "FAILED"
	case CauseDisabled:
		return "OFF"
	}
	return "MISSING"
}

func reason(f Feature) string {
	detail := ""
	if f.Error != "" {
		detail = ": " + f.Error
	}
	switch f.Cause {
	case CauseOldKernel:
		return fmt.Sprintf("not supported by this kernel (needs Linux %s or later)%s", f.MinKernel, detail)
	case CauseKernelConfig:
		return fmt.Sprintf("not available although this kernel is newer than Linux %s: disabled in the kernel config or by the distribution%s", f.MinKernel, detail)
	case CauseLockdown:
		return "refused by kernel lockdown" + detail
	case CausePermission:
		return "permission denied (needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN, or a seccomp/LSM policy forbids it)" + detail
	case CauseNotMounted:
		return "not mounted" + detail
	case CauseSelfTestFailed:
		return "self-test failed" + detail
	case CauseDisabled:
		return "turned off on request"
	case CauseProbeFailed:
		return "probe failed" + detail
	}
	return "missing" + detail
}
