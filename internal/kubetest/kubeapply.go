package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// BuildKustomization builds the kustomization in dir with kustomize's own
// Go API (krusty), as `kubectl apply -k` does, and returns its objects in
// kustomize's order (namespaces first).
func BuildKustomization(dir string) ([]*unstructured.Unstructured, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	b, err := res.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	return DecodeObjects(b)
}

// DecodeObjects decodes a stream of YAML (or JSON) documents; empty
// documents are skipped.
func DecodeObjects(b []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("decode manifest: %w", err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// Apply applies objs as the admin with server-side apply and field
// validation Strict (an unknown or duplicated field is an error, not a
// warning), one at a time in order: first as a dry run (DryRun All, every
// admission step but storage), then for real, so that an object's
// namespace exists when it is applied. It fails t with the first error.
func (k *KubeAPI) Apply(t testing.TB, objs []*unstructured.Unstructured) {
	t.Helper()
	if err := k.ApplyObjects(objs); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

// ApplyKustomization builds dir with krusty and applies it (Apply).
func (k *KubeAPI) ApplyKustomization(t testing.TB, dir string) {
	t.Helper()
	objs, err := BuildKustomization(dir)
	if err != nil {
		t.Fatalf("%v", err)
	}
	k.Apply(t, objs)
}

// ApplyObjects is Apply returning the error.
func (k *KubeAPI) ApplyObjects(objs []*unstructured.Unstructured) error {
	cfg := k.Config(KubeAdmin)
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		return fmt.Errorf("discover API resources: %w", err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	force := true
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		what := fmt.Sprintf("%s %s", gvk.Kind, obj.GetName())
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := obj.GetNamespace()
			if ns == "" {
				return fmt.Errorf("%s: namespaced object without a namespace", what)
			}
			ri = dyn.Resource(mapping.Resource).Namespace(ns)
		}
		data, err := obj.MarshalJSON()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		for _, dryRun := range [][]string{{metav1.DryRunAll}, nil} {
			opts := metav1.PatchOptions{FieldManager: "sockbridge-test", Force: &force, DryRun: dryRun, FieldValidation: "Strict"}
			if _, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts); err != nil {
				return fmt.Errorf("%s (dry run %v): %w", what, dryRun != nil, err)
			}
		}
	}
	return nil
}
