// Package policy is sockbridge's pure-Go model of what to capture: the mesh
// presets, the per-pod policy the Kubernetes annotations produce, and the
// limits the datapath's maps impose. It imports no BPF code and no
// client-go; Preset.Evaluate is a pure function of one *corev1.Pod.
//
// # Semantics
//
// The istio preset reproduces istio-iptables as Istio's injection template
// invokes it: includeOutboundIPRanges (-i, default "*"), excludeOutboundIPRanges
// (-x), includeOutboundPorts (-q), excludeOutboundPorts (-o),
// includeInboundPorts (-b, default "*"), excludeInboundPorts (-d, plus
// 15090, 15021 and the status port), with the rule order of ISTIO_OUTPUT
// and ISTIO_INBOUND documented on Outbound and Inbound. docs/annotations.md
// lists every annotation of every preset with its sources.
//
// # Bad annotations: the documented safe behaviour
//
// Istio never runs a pod whose capture annotations it cannot read: the
// injector rejects the pod (validateAnnotations) and istio-cni fails the
// pod's sandbox (NewRedirect). sockbridge watches pods that already run, so
// it cannot refuse them; instead a meshed pod with any rejected value
// (malformed list, list over MaxPorts/MaxCIDRs, unknown or unsupported
// interception mode, an unsupported annotation, a pinned value that
// differs from the preset) is not captured at all: Evaluation.Capture is
// false, Reason and Problems name each annotation, its value and what is
// valid, and Outbound/Inbound are zero. Nothing is half-applied, so no
// traffic the user meant to exclude is ever sent to the sidecar, and the
// pod behaves exactly as an unmeshed pod until the annotation is fixed;
// the next Evaluate after the fix captures it again, without a restart.
// Other pods are never affected: Evaluate reads only its argument.
//
// Values whose meaning is unambiguous are accepted even where Istio's
// injector is stricter: whitespace around entries and empty entries
// ("80,,443") are ignored, duplicates are removed, prefixes are masked.
package policy
