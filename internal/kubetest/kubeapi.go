// Package kubetest runs a throw-away control plane for tests (Debian's etcd
// and a kube-apiserver built from the Go module proxy) and applies manifests
// to it the way a cluster operator does: kustomize's Go API to build,
// server-side apply with field validation Strict to apply.
package kubetest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/sockbridge/sockbridge/internal/testutil"
)

// KubeVersion is the kube-apiserver release scripts/kube-apiserver.sh builds.
const KubeVersion = "v1.35.4"

// KubeAdmin is the name of the KubeAPI's admin user (group system:masters).
const KubeAdmin = "admin"

// KubeUser is a user of the API server's static token file.
type KubeUser struct {
	Name   string
	Groups []string
}

// KubeAPI is a throw-away control plane for one test: Debian's etcd and a
// kube-apiserver built from the Go module proxy, both on 127.0.0.1 and
// non-default ports, with a static token per user and RBAC authorization.
// There is no controller-manager, scheduler or kubelet: whatever they would
// do (service accounts, pod status) the test does itself.
type KubeAPI struct {
	// URL is the API server's https address.
	URL    string
	tokens map[string]string
	log    *os.File
}

// StartKubeAPI starts etcd and kube-apiserver and waits until the API
// server is ready (about 3 s). Besides the admin, users get tokens and
// only what RBAC objects the test creates grant them. Cleanup kills both
// processes by PID and removes their directories. Missing binaries fail
// the test under CI=true and skip it otherwise.
//
// The kube-apiserver binary is $SOCKBRIDGE_KUBE_APISERVER, or the one
// scripts/kube-apiserver.sh caches (built by the script when missing).
func StartKubeAPI(t testing.TB, users ...KubeUser) *KubeAPI {
	t.Helper()
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		testutil.Unavailable(t, "etcd is not installed (Debian package etcd-server; scripts/install-deps.sh)")
	}
	apiBin, err := kubeAPIServerBinary()
	if err != nil {
		testutil.Unavailable(t, "no kube-apiserver: %v (run make kube-apiserver or set SOCKBRIDGE_KUBE_APISERVER)", err)
	}

	dir, err := os.MkdirTemp("", "sockbridge-kubeapi-")
	if err != nil {
		t.Fatalf("kube api dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	k := &KubeAPI{tokens: map[string]string{}}

	ports, err := freePorts(3)
	if err != nil {
		t.Fatalf("free ports: %v", err)
	}
	etcdClient := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	etcdPeer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	etcdProc := startDaemon(t, filepath.Join(dir, "etcd.log"), etcdBin,
		"--name", "sockbridge-test",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdClient,
		"--advertise-client-urls", etcdClient,
		"--listen-peer-urls", etcdPeer,
		"--initial-advertise-peer-urls", etcdPeer,
		"--initial-cluster", "sockbridge-test="+etcdPeer,
		"--initial-cluster-state", "new",
		"--logger", "zap", "--log-level", "warn",
	)

	if err := k.writeAuth(dir, users); err != nil {
		t.Fatalf("kube api credentials: %v", err)
	}
	k.URL = fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	logPath := filepath.Join(dir, "kube-apiserver.log")
	apiProc := startDaemon(t, logPath, apiBin,
		"--etcd-servers", etcdClient,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(ports[2]),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(dir, "sa.key"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--authorization-mode", "RBAC",
		// No controller-manager creates the default service accounts the
		// ServiceAccount plugin would wait for.
		"--disable-admission-plugins", "ServiceAccount",
		"--endpoint-reconciler-type", "none",
		"--v", "1",
	)

	if err := k.waitReady(60*time.Second, etcdProc, apiProc); err != nil {
		b, _ := os.ReadFile(logPath)
		e, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
		t.Fatalf("kube-apiserver not ready: %v\n--- kube-apiserver log (tail):\n%s\n--- etcd log (tail):\n%s", err, tail(b, 4000), tail(e, 2000))
	}
	return k
}

// kubeAPIServerBinary finds kube-apiserver: $SOCKBRIDGE_KUBE_APISERVER, the
// cache of scripts/kube-apiserver.sh, or a fresh build by that script.
func kubeAPIServerBinary() (string, error) {
	if p := os.Getenv("SOCKBRIDGE_KUBE_APISERVER"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("SOCKBRIDGE_KUBE_APISERVER: %w", err)
		}
		return p, nil
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("find cache dir: %w", err)
		}
		cache = filepath.Join(home, ".cache")
	}
	cached := filepath.Join(cache, "sockbridge", "kube-apiserver-"+KubeVersion)
	if _, err := os.Stat(cached); err == nil {
		return cached, nil
	}
	script, err := repoFile("scripts/kube-apiserver.sh")
	if err != nil {
		return "", fmt.Errorf("%s not built and %w", cached, err)
	}
	fmt.Fprintf(os.Stderr, "building kube-apiserver %s with %s (7-9 minutes on 2 cores)...\n", KubeVersion, script)
	cmd := exec.Command(script)
	cmd.Env = append(os.Environ(), "KUBE_VERSION="+KubeVersion)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// repoFile finds a file of the repository from the test's directory up.
func repoFile(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no %s above the working directory", rel)
		}
		dir = parent
	}
}

// writeAuth writes the static token file and a throw-away service-account
// signing key.
func (k *KubeAPI) writeAuth(dir string, users []KubeUser) error {
	var csv bytes.Buffer
	all := append([]KubeUser{{Name: KubeAdmin, Groups: []string{"system:masters"}}}, users...)
	for i, u := range all {
		tok := "sbtest-" + testutil.RandomSuffix() + testutil.RandomSuffix()
		k.tokens[u.Name] = tok
		fmt.Fprintf(&csv, "%s,%s,uid-%d,%q\n", tok, u.Name, i, strings.Join(u.Groups, ","))
	}
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), csv.Bytes(), 0o600); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate service account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode service account key: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// daemon is a process started by StartKubeAPI.
type daemon struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// startDaemon starts a process with its output in logPath and registers
// its kill (by PID) at cleanup. ETCD_* variables are removed from its
// environment: etcd reads them as flags.
func startDaemon(t testing.TB, logPath, bin string, args ...string) *daemon {
	t.Helper()
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("create %s: %v", logPath, err)
	}
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		t.Fatalf("start %s: %v", bin, err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{})}
	go func() { d.err = cmd.Wait(); log.Close(); close(d.done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-d.done
		}
	})
	return d
}

func (d *daemon) exited() error {
	select {
	case <-d.done:
		return fmt.Errorf("%s exited: %v", filepath.Base(d.cmd.Path), d.err)
	default:
		return nil
	}
}

// waitReady polls /readyz as the admin until it answers 200.
func (k *KubeAPI) waitReady(timeout time.Duration, procs ...*daemon) error {
	cfg := k.Config(KubeAdmin)
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: rt, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		for _, p := range procs {
			if err := p.exited(); err != nil {
				return err
			}
		}
		resp, err := hc.Get(k.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/readyz: %s", resp.Status)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("after %s: %w", timeout, last)
}

// Config returns a client configuration authenticating as user. The
// serving certificate is the API server's self-signed one, so TLS is not
// verified (loopback only).
func (k *KubeAPI) Config(user string) *rest.Config {
	return &rest.Config{
		Host:            k.URL,
		BearerToken:     k.tokens[user],
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             1000,
		Burst:           2000,
		UserAgent:       "sockbridge-test/" + user,
	}
}

// Client returns a clientset authenticating as user.
func (k *KubeAPI) Client(t testing.TB, user string) kubernetes.Interface {
	t.Helper()
	if _, ok := k.tokens[user]; !ok {
		t.Fatalf("kube api: no user %q", user)
	}
	cs, err := kubernetes.NewForConfig(k.Config(user))
	if err != nil {
		t.Fatalf("kube client for %s: %v", user, err)
	}
	return cs
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// Kubeconfig writes a kubeconfig file authenticating as user (for a
// process such as the agent binary) into dir and returns its path.
func (k *KubeAPI) Kubeconfig(t testing.TB, dir, user string) string {
	t.Helper()
	tok, ok := k.tokens[user]
	if !ok {
		t.Fatalf("kube api: no user %q", user)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: k.URL, InsecureSkipTLSVerify: true}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: tok}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: user}
	cfg.CurrentContext = "test"
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	return path
}
