package main

import (
	"strings"
	"testing"
)

func TestWriteFailureList(t *testing.T) {
	var b strings.Builder
	writeFailureList(&b, "### Failures\n\n", nil)
	if b.Len() != 0 {
		t.Errorf("no failures wrote %q", b.String())
	}
	writeFailureList(&b, "### Failures\n\n", []string{"round 1: a", "round 2: b"})
	if want := "### Failures\n\n- round 1: a\n- round 2: b\n\n"; b.String() != want {
		t.Errorf("wrote %q, want %q", b.String(), want)
	}
}

// logSection logs a section's report and fails t once for each failed run
// the section lists.
func logSection(t *testing.T, md string, failures []string) {
	t.Helper()
	t.Logf("\n%s", md)
	for _, f := range failures {
		t.Errorf("%s", f)
	}
}
