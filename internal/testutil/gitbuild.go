package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BuildAtCommit builds the Go package pkg (a path inside the repository,
// "./cmd/sockbridge") as it was at commit of the git repository the test
// runs in, and returns the binary's path. The tree is exported with `git
// archive` into a temporary directory (nothing is written to the clone)
// and built there with this machine's Go build and module caches, so a
// rebuild takes seconds; the first one may fetch modules the old go.sum
// names from the module proxy. It fails t, saying how to fix it, when the
// commit is not in the clone (a shallow one).
func BuildAtCommit(t testing.TB, commit, pkg string) string {
	t.Helper()
	for _, tool := range []string{"git", "tar", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			Unavailable(t, "building an earlier release needs %s in PATH", tool)
		}
	}
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		Unavailable(t, "building an earlier release needs the git repository the tests run in: %v", err)
	}
	repo := strings.TrimSpace(string(top))
	if out, err := exec.Command("git", "-C", repo, "cat-file", "-e", commit+"^{commit}").CombinedOutput(); err != nil {
		t.Fatalf("commit %s is not in the clone at %s (%v %s): this test builds that release from git history; fetch the full history (git fetch --unshallow) and run it again",
			commit, repo, err, strings.TrimSpace(string(out)))
	}
	dir := ReadableTempDir(t, "sockbridge-"+commit+"-")
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	archive := exec.Command("git", "-C", repo, "archive", "--format=tar", commit)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	untar.Stdin = pipe
	var archiveErr, untarErr strings.Builder
	archive.Stderr, untar.Stderr = &archiveErr, &untarErr
	if err := untar.Start(); err != nil {
		t.Fatalf("tar: %v", err)
	}
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", commit, err, archiveErr.String())
	}
	if err := untar.Wait(); err != nil {
		t.Fatalf("unpack git archive %s: %v\n%s", commit, err, untarErr.String())
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	build := exec.Command("go", "build", "-buildvcs=false", "-o", out, pkg)
	build.Dir = src
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s at %s: %v\n%s", pkg, commit, err, b)
	}
	return out
}
