package controller_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sockbridge/sockbridge/pkg/controller"
	"github.com/sockbridge/sockbridge/pkg/policy"
)

// A wrong node name: the API server knows no such Node and lists no pod
// for it. The controller says so, and its empty first list does not empty
// the datapath, whose entries belong to the node's real pods; with the
// right name the same controller start reconciles.
func TestWrongNodeNameKeepsPodMap(t *testing.T) {
	k := newKube(t)
	pa := k.createPod("a", "cgroupfs", "10.250.0.2", nil)
	dp := newRecDatapath()
	dp.pods[pa.id] = policy.Pod{Name: namespace + "/a", CgroupID: pa.id, Capture: true}
	stale := uint64(1 << 40)
	dp.pods[stale] = policy.Pod{Name: "gone/while-down", CgroupID: stale, Capture: true}

	a := k.runController(dp, func(c *controller.Config) { c.NodeName = "node-typo" })
	a.waitReady(t)
	a.waitLog(t, logrus.WarnLevel, 10*time.Second, `node "node-typo" does not exist`)
	a.waitLog(t, logrus.WarnLevel, 10*time.Second, "no pod is bound to this node")
	if _, ok := dp.snapshot()[pa.id]; !ok || dp.opsCount() != 0 {
		t.Fatalf("a wrong node name changed the pod map (%d operations): %v", dp.opsCount(), dp.snapshot())
	}
	a.stop(t)

	// The right name: the node exists (no warning), the stale entry goes.
	b := k.runController(dp, func(*controller.Config) {})
	b.waitReady(t)
	if m := dp.snapshot(); !m[pa.id].Capture || len(m) != 1 {
		t.Errorf("right node name: pod map %v, want only pod a", m)
	}
	for _, e := range b.logs.AllEntries() {
		if strings.Contains(e.Message, "does not exist") {
			t.Errorf("warned about an existing node: %s", e.Message)
		}
	}
}

// Credentials that may not list pods: client-go's WaitForCacheSync would
// wait forever without a word. The controller logs what it cannot list
// after the sync timeout, is not ready and says why, and becomes ready
// once RBAC grants the list.
func TestForbiddenListNotReady(t *testing.T) {
	k := newKube(t)
	dp := newRecDatapath()
	a := k.runController(dp, func(c *controller.Config) {
		c.Client = k.api.Client(t, unboundUser)
		c.SyncTimeout = time.Second
	})
	line := a.waitLog(t, logrus.ErrorLevel, 30*time.Second, "cannot list pods", "spec.nodeName="+nodeName, "forbidden")
	t.Logf("logged: %s", line)
	select {
	case <-a.c.Ready():
		t.Fatal("ready without being allowed to list pods")
	default:
	}
	if why := a.c.NotReady(); !strings.Contains(why, "forbidden") || !strings.Contains(why, "pods") {
		t.Errorf("NotReady() = %q, want the forbidden list", why)
	}
	if dp.opsCount() != 0 {
		t.Errorf("the datapath was changed %d times before the first list", dp.opsCount())
	}

	// Grant it: the informer's retries succeed.
	_, err := k.admin.RbacV1().ClusterRoleBindings().Create(context.Background(), &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "unbound-agent"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "sockbridge-agent"},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: unboundUser}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a.waitReady(t)
	if why := a.c.NotReady(); why != "" {
		t.Errorf("ready, but NotReady() = %q", why)
	}
}
