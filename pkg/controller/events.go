package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/sockbridge/sockbridge/pkg/policy"
)

// Degraded is a part of capture the agent's plan leaves out, and which pods
// it affects.
type Degraded struct {
	Reason  string // the Event reason, e.g. ReasonInboundUnavailable
	Message string
	Affects func(policy.Pod) bool
}

// reportDegraded records an Event for each Degraded that affects the pod,
// once per pod object.
func (c *Controller) reportDegraded(pod *corev1.Pod, p policy.Pod) {
	for _, d := range c.cfg.Degraded {
		if !d.Affects(p) {
			continue
		}
		c.mu.Lock()
		sent := c.degradedSent[pod.UID]
		if sent == nil {
			sent = map[string]bool{}
			c.degradedSent[pod.UID] = sent
		}
		fresh := !sent[d.Reason]
		sent[d.Reason] = true
		c.mu.Unlock()
		if fresh {
			c.log.WithField("pod", pod.Namespace+"/"+pod.Name).Warn(d.Message)
			c.recorder.Event(pod, corev1.EventTypeWarning, d.Reason, d.Message)
		}
	}
}

// report records an Event and a log line for each problem of the pod's
// annotations that was not reported for this pod object yet, so resyncs and
// unrelated updates do not repeat them.
func (c *Controller) report(key string, pod *corev1.Pod, ev policy.Evaluation) {
	c.mu.Lock()
	prev, ok := c.reported[key]
	if !ok || prev.uid != pod.UID {
		prev = reportedProblems{uid: pod.UID}
	}
	problems := append(slices.Clone(ev.Problems), ev.DNSProblems...)
	if len(problems) == 0 {
		if len(prev.messages) > 0 {
			delete(c.reported, key)
		}
		c.mu.Unlock()
		return
	}
	now := make(map[string]bool, len(problems))
	var fresh []policy.Problem
	for _, p := range problems {
		msg := p.Error()
		if now[msg] {
			continue
		}
		now[msg] = true
		if !prev.messages[msg] {
			fresh = append(fresh, p)
		}
	}
	c.reported[key] = reportedProblems{uid: pod.UID, messages: now}
	c.mu.Unlock()

	for _, p := range fresh {
		c.log.WithFields(logrus.Fields{
			"pod": key, "annotation": p.Annotation, "value": p.Value, "valid": p.Valid,
		}).WithError(p.Err).Warn("invalid capture annotation; the documented safe behaviour applies")
		c.recorder.Event(pod, corev1.EventTypeWarning, ReasonInvalidAnnotation, eventMessage(p, ""))
	}
}

// eventMessage renders a problem (or, when text is set, that text) for
// kubectl describe, within the API's 1 KiB message limit.
func eventMessage(p policy.Problem, text string) string {
	msg := text
	if msg == "" {
		msg = "sockbridge: " + p.Error()
	}
	const max = 1024
	if len(msg) > max {
		msg = msg[:max-3] + "..."
	}
	return strings.ToValidUTF8(msg, "?")
}

// newEventRecorder returns an event pipeline writing through client, as
// component "sockbridge" on node.
func newEventRecorder(client kubernetes.Interface, node string) (record.EventBroadcaster, record.EventRecorder) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&createOnlySink{events: client.CoreV1()})
	r := b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "sockbridge", Host: node})
	return b, r
}

// createOnlySink writes Events with create only, the one verb the agent's
// ClusterRole grants: where client-go would patch a repeated Event's count,
// it creates a new Event instead. The controller's own deduplication keeps
// repeats rare.
type createOnlySink struct {
	events typedcorev1.EventsGetter
}

var _ record.EventSink = (*createOnlySink)(nil)

func (s *createOnlySink) Create(e *corev1.Event) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.events.Events(e.Namespace).Create(ctx, e, metav1.CreateOptions{})
}

func (s *createOnlySink) Update(e *corev1.Event) (*corev1.Event, error) {
	return s.Create(renamed(e))
}

func (s *createOnlySink) Patch(e *corev1.Event, _ []byte) (*corev1.Event, error) {
	return s.Create(renamed(e))
}

// renamed returns a copy of e under a new name, without a resource version.
func renamed(e *corev1.Event) *corev1.Event {
	n := e.DeepCopy()
	n.Name = fmt.Sprintf("%s.%x", e.InvolvedObject.Name, time.Now().UnixNano())
	n.ResourceVersion = ""
	return n
}

// stripManagedFields drops what the controller never reads from the
// informer's copies, to keep its memory proportional to the node's pods.
func stripManagedFields(obj any) (any, error) {
	if pod, ok := obj.(*corev1.Pod); ok {
		pod.ManagedFields = nil
	}
	return obj, nil
}
