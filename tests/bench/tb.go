package main

import (
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
)

// programTB is the testutil.TB of the benchmark program: Fatalf runs every
// cleanup registered so far, newest first, and exits non-zero; SIGINT and
// SIGTERM do the same. Cleanups run exactly once, whoever triggers them.
type programTB struct {
	log      *log.Logger
	mu       sync.Mutex
	cleanups []func()
	once     sync.Once
	cleaning atomic.Bool
}

func newProgramTB() *programTB {
	return &programTB{log: log.New(os.Stderr, "bench: ", log.Ltime)}
}

func (t *programTB) Helper() {}

func (t *programTB) Logf(format string, args ...any) { t.log.Printf(format, args...) }

// Fatalf cleans up and exits. Once cleanup has started (a signal, or an
// earlier Fatalf), it only ends the calling goroutine: a cleanup that
// fails, or the benchmark's own work whose namespaces just went away,
// while the cleanup goroutine carries on and exits.
func (t *programTB) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if t.cleaning.Load() {
		t.log.Printf("during cleanup: %s", msg)
		runtime.Goexit()
	}
	t.log.Printf("FATAL: %s", msg)
	t.RunCleanups()
	os.Exit(1)
}

// Cleanup registers f; once cleanup has started, f runs at once, so that
// nothing created meanwhile is left behind.
func (t *programTB) Cleanup(f func()) {
	t.mu.Lock()
	if !t.cleaning.Load() {
		t.cleanups = append(t.cleanups, f)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	t.runOne(f)
}

// RunCleanups runs the cleanups in reverse order of registration. A
// concurrent caller waits until they are done.
func (t *programTB) RunCleanups() {
	t.once.Do(func() {
		t.mu.Lock()
		t.cleaning.Store(true)
		fs := t.cleanups
		t.cleanups = nil
		t.mu.Unlock()
		for i := len(fs) - 1; i >= 0; i-- {
			t.runOne(fs[i])
		}
	})
}

// runOne runs f on a goroutine of its own, so that a Fatalf or a panic
// inside it ends only f.
func (t *programTB) runOne(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				t.log.Printf("cleanup panicked: %v", r)
			}
		}()
		f()
	}()
	<-done
}

// HandleSignals cleans up and exits on SIGINT or SIGTERM.
func (t *programTB) HandleSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-ch
		t.log.Printf("%v: cleaning up", sig)
		t.RunCleanups()
		os.Exit(130)
	}()
}
