package main

import (
	"fmt"
	"strings"
)

// writeFailureList writes a section's failed runs under heading (which
// carries its own line breaks) as a list followed by a blank line; nothing
// when there are none.
func writeFailureList(b *strings.Builder, heading string, failures []string) {
	if len(failures) == 0 {
		return
	}
	b.WriteString(heading)
	for _, f := range failures {
		fmt.Fprintf(b, "- %s\n", f)
	}
	b.WriteString("\n")
}
