package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
)

// TestWriteGrid writes a grid of panels and checks that a PNG came out,
// and that a ragged grid is an error, not a panic.
func TestWriteGrid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grid.png")
	ragged := [][]*plot.Plot{{plot.New(), plot.New(), plot.New()}, {plot.New(), plot.New()}}
	if err := writeGrid(path, ragged, 6*vg.Inch, 4*vg.Inch); err == nil {
		t.Fatal("a ragged grid was written")
	}
	plots := [][]*plot.Plot{{plot.New(), plot.New(), plot.New()}, {plot.New(), plot.New(), plot.New()}}
	if err := writeGrid(path, plots, 6*vg.Inch, 4*vg.Inch); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("%s is not a PNG (%d bytes)", path, len(raw))
	}
}
