package probe

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const schemaPath = "../../docs/probe.schema.json"

// validateJSON checks doc against the JSON Schema in schemaPath. It
// implements the keywords docs/probe.schema.json uses and refuses any
// other, so the schema cannot grow a rule this check silently ignores.
func validateJSON(t *testing.T, doc []byte) error {
	t.Helper()
	raw, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatalf("read schema: %v", err)
	}
	var schema map[string]any
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatalf("parse schema: %v", err)
	}
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return (&validator{root: schema}).validate(schema, v, "$")
}

type validator struct{ root map[string]any }

func (vd *validator) validate(s map[string]any, v any, at string) error {
	for key, rule := range s {
		var err error
		switch key {
		case "$schema", "$id", "title", "description", "$defs":
		case "$ref":
			err = vd.ref(rule.(string), v, at)
		case "type":
			if !hasType(v, rule.(string)) {
				err = fmt.Errorf("%s: want %s, got %T", at, rule, v)
			}
		case "const":
			if !equalJSON(v, rule) {
				err = fmt.Errorf("%s: want %v, got %v", at, rule, v)
			}
		case "enum":
			if !slices.ContainsFunc(rule.([]any), func(e any) bool { return equalJSON(v, e) }) {
				err = fmt.Errorf("%s: %v is not one of %v", at, v, rule)
			}
		case "required":
			obj, _ := v.(map[string]any)
			for _, name := range rule.([]any) {
				if _, ok := obj[name.(string)]; !ok && obj != nil {
					err = fmt.Errorf("%s: missing %q", at, name)
					break
				}
			}
		case "properties":
			obj, _ := v.(map[string]any)
			for name, sub := range rule.(map[string]any) {
				if pv, ok := obj[name]; ok {
					if err = vd.validate(sub.(map[string]any), pv, at+"."+name); err != nil {
						break
					}
				}
			}
		case "additionalProperties":
			obj, _ := v.(map[string]any)
			props, _ := s["properties"].(map[string]any)
			for name := range obj {
				if _, ok := props[name]; !ok && rule == false {
					err = fmt.Errorf("%s: unexpected field %q", at, name)
					break
				}
			}
		case "items":
			arr, _ := v.([]any)
			for i, item := range arr {
				if err = vd.validate(rule.(map[string]any), item, fmt.Sprintf("%s[%d]", at, i)); err != nil {
					break
				}
			}
		case "minLength":
			if str, ok := v.(string); ok && len(str) < int(rule.(float64)) {
				err = fmt.Errorf("%s: %q is shorter than %v", at, str, rule)
			}
		case "minimum":
			if n, ok := v.(json.Number); ok {
				if f, _ := n.Float64(); f < rule.(float64) {
					err = fmt.Errorf("%s: %v is below %v", at, n, rule)
				}
			}
		case "pattern":
			if str, ok := v.(string); ok && !regexp.MustCompile(rule.(string)).MatchString(str) {
				err = fmt.Errorf("%s: %q does not match %s", at, str, rule)
			}
		default:
			return fmt.Errorf("schema keyword %q is not implemented by this validator", key)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (vd *validator) ref(ref string, v any, at string) error {
	name, ok := strings.CutPrefix(ref, "#/$defs/")
	if !ok {
		return fmt.Errorf("unsupported $ref %q", ref)
	}
	def, ok := vd.root["$defs"].(map[string]any)[name].(map[string]any)
	if !ok {
		return fmt.Errorf("$ref %q not found", ref)
	}
	return vd.validate(def, v, at)
}

func hasType(v any, typ string) bool {
	switch typ {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "integer":
		n, ok := v.(json.Number)
		_, err := n.Int64()
		return ok && err == nil
	case "number":
		_, ok := v.(json.Number)
		return ok
	}
	return false
}

// equalJSON compares a decoded document value (numbers as json.Number)
// with a schema value (numbers as float64).
func equalJSON(v, schema any) bool {
	if n, ok := v.(json.Number); ok {
		f, err := n.Float64()
		return err == nil && f == schema
	}
	return reflect.DeepEqual(v, schema)
}

func TestReportMatchesSchema(t *testing.T) {
	for _, r := range []*Report{
		allSupported(),
		allSupported().Without("selftest/splice"),
		allSupported().Without("cgroup2", "bpf_get_netns_cookie@sock_ops"),
	} {
		doc, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := validateJSON(t, doc); err != nil {
			t.Errorf("report does not match %s: %v\n%s", schemaPath, err, doc)
		}
	}
}

// The validator must reject what the schema forbids, or the test above
// proves nothing.
func TestSchemaRejects(t *testing.T) {
	good, err := json.Marshal(allSupported())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func(m map[string]any)
	}{
		{"missing plan", func(m map[string]any) { delete(m, "plan") }},
		{"unknown field", func(m map[string]any) { m["extra"] = 1 }},
		{"wrong schema version", func(m map[string]any) { m["schema_version"] = 2 }},
		{"negative duration", func(m map[string]any) { m["duration_ms"] = -1 }},
		{"bad kind", func(m map[string]any) { feature0(m)["kind"] = "syscall" }},
		{"bad min_kernel", func(m map[string]any) { feature0(m)["min_kernel"] = "5.x" }},
		{"supported as string", func(m map[string]any) { feature0(m)["supported"] = "yes" }},
		{"feature without name", func(m map[string]any) { delete(feature0(m), "name") }},
		{"reasons null", func(m map[string]any) { m["plan"].(map[string]any)["reasons"] = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m map[string]any
			if err := json.Unmarshal(good, &m); err != nil {
				t.Fatal(err)
			}
			tt.edit(m)
			doc, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if err := validateJSON(t, doc); err == nil {
				t.Errorf("accepted %s", doc)
			}
		})
	}
}

func feature0(m map[string]any) map[string]any {
	return m["features"].([]any)[0].(map[string]any)
}
