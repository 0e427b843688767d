package testutil

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ProcSpec says where and as whom a process runs.
type ProcSpec struct {
	Netns  *Netns // nil: the current namespace
	Cgroup string // cgroup v2 directory to start in; "" keeps the current one
	// UID and GID to run as (nsenter -S/-G); nil keeps root.
	UID, GID *int
	Args     []string
	Env      []string
	// Dir is the working directory; "" keeps the caller's, except for a
	// process run as another uid, which starts in "/" since it may not be
	// allowed into the caller's (a 0700 checkout, for instance).
	Dir string
}

// Proc is a started process whose output is collected.
type Proc struct {
	Cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// Int returns a pointer to v, for ProcSpec.UID and GID.
func Int(v int) *int { return &v }

// Command builds the exec.Cmd for spec: the process is cloned straight into
// the cgroup (CLONE_INTO_CGROUP, kernel 5.7) so that every socket it opens
// belongs there, and enters the namespace with nsenter.
func Command(ctx context.Context, spec ProcSpec) (*exec.Cmd, func(), error) {
	args := spec.Args
	if spec.Netns != nil || spec.UID != nil || spec.GID != nil {
		pre := []string{"nsenter"}
		if spec.Netns != nil {
			pre = append(pre, "--net="+spec.Netns.Path())
		}
		if spec.GID != nil {
			pre = append(pre, "-G", strconv.Itoa(*spec.GID))
		}
		if spec.UID != nil {
			pre = append(pre, "-S", strconv.Itoa(*spec.UID))
		}
		args = append(append(pre, "--"), args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Dir = spec.Dir
	if cmd.Dir == "" && (spec.UID != nil || spec.GID != nil) {
		cmd.Dir = "/"
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	release := func() {}
	if spec.Cgroup != "" {
		f, err := os.Open(spec.Cgroup)
		if err != nil {
			return nil, nil, fmt.Errorf("open cgroup %s: %w", spec.Cgroup, err)
		}
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(f.Fd())
		release = func() { f.Close() }
	}
	return cmd, release, nil
}

// Start starts a long-running process and kills it (by its PID and process
// group) at cleanup.
func Start(t TB, spec ProcSpec) *Proc {
	t.Helper()
	cmd, release, err := Command(context.Background(), spec)
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer release()
	p := &Proc{Cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", spec.Args, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.Stop() })
	return p
}

// Stop kills the process group the process leads and waits for it.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// Exited reports whether the process has ended, and its error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Wait waits for the process to end and returns its error.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Output is everything the process wrote so far.
func (p *Proc) Output() string { return p.out.String() }

// WaitOutput waits until the output contains s.
func (p *Proc) WaitOutput(s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if bytes.Contains(p.out.Bytes(), []byte(s)) {
			return true
		}
		if done, _ := p.Exited(); done {
			return bytes.Contains(p.out.Bytes(), []byte(s))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// Output runs a process to completion and returns its stdout; stderr goes
// into the failure message.
func Output(t TB, timeout time.Duration, spec ProcSpec) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd, release, err := Command(ctx, spec)
	if err != nil {
		return nil, err
	}
	defer release()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%v: %w\n%s", spec.Args, err, stderr.String())
	}
	return stdout.Bytes(), nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

func (s *syncBuffer) String() string { return string(s.Bytes()) }

var _ io.Writer = (*syncBuffer)(nil)
