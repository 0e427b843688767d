package coexist

import (
	"encoding/binary"
	"maps"
	"slices"
	"testing"
)

// TestObjectNames checks the names and the config layout lb.go uses
// against the compiled object, which has no generated bindings to do it.
func TestObjectNames(t *testing.T) {
	spec, err := loadLbSpec()
	if err != nil {
		t.Fatal(err)
	}
	progs := slices.Sorted(maps.Keys(spec.Programs))
	if want := []string{lbProgConnect4}; !slices.Equal(progs, want) {
		t.Errorf("object has programs %v, lb.go uses %v", progs, want)
	}
	var objMaps []string
	for name := range spec.Maps {
		if name[0] != '.' {
			objMaps = append(objMaps, name)
		}
	}
	slices.Sort(objMaps)
	if want := []string{lbMapStats}; !slices.Equal(objMaps, want) {
		t.Errorf("object has maps %v, lb.go uses %v", objMaps, want)
	}
	v, ok := spec.Variables[lbVarConfig]
	if !ok {
		t.Fatalf("object has no variable %s", lbVarConfig)
	}
	if got, want := int(v.Size()), binary.Size(lbConfig{}); got != want {
		t.Errorf("struct lb_config is %d bytes, lbConfig %d", got, want)
	}
}
