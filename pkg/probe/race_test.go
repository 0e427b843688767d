//go:build race

package probe

// raceEnabled: the race detector slows each self-test helper's start
// tenfold, so the 2 s bound on the probe's duration does not apply.
const raceEnabled = true
