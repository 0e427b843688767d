package policy

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// Preset describes one mesh: its sidecar's identity and ports, how to tell
// a pod carries its sidecar, and how its annotations read. Presets are
// data; Evaluate is shared by all of them.
//
// CONTRACT (filled in by the policy work of issue 5): field set may grow,
// the names below are used by pkg/controller and cmd/sockbridge.
type Preset struct {
	Name               string
	ProxyUID, ProxyGID uint32
	OutboundPort       uint16
	InboundPort        uint16
	// NeverCapturedInbound are inbound ports never redirected (Istio:
	// 15008, 15020, 15021, 15090); the status port is added per pod.
	NeverCapturedInbound []uint16
}

// Evaluation is what a preset makes of one pod's spec and annotations.
type Evaluation struct {
	// Meshed: the pod carries this mesh's sidecar.
	Meshed bool
	// Capture: the datapath should intercept the pod's traffic (meshed,
	// interception mode supported and on).
	Capture bool
	// Reason says why Capture is false, for logs and events.
	Reason   string
	Outbound Outbound
	Inbound  Inbound
	// Problems lists bad annotations; each was replaced by the
	// documented safe behaviour.
	Problems []Problem
}

// Problem is one annotation that could not be used.
type Problem struct {
	Annotation string // the annotation key
	Value      string // its value as given
	Valid      string // what would be valid
	Err        error
}

func (p Problem) Error() string {
	return fmt.Sprintf("annotation %s=%q: %v (valid: %s)", p.Annotation, p.Value, p.Err, p.Valid)
}

// PresetByName returns a built-in preset: "istio", "linkerd" or "kuma".
func PresetByName(name string) (*Preset, error) {
	return nil, fmt.Errorf("mesh preset %q unknown (valid: istio, linkerd, kuma)", name)
}

// Evaluate applies the preset to a pod.
func (p *Preset) Evaluate(pod *corev1.Pod) Evaluation {
	return Evaluation{}
}
