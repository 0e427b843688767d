package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestReadyz(t *testing.T) {
	r := newReadiness()
	srv := httptest.NewServer(r.handler(newRegistry()))
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d before anything is loaded, want 200", code)
	}
	code, body := get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "datapath: not loaded yet") || !strings.Contains(body, "pods: not reconciled yet") {
		t.Errorf("/readyz at start = %d %q, want 503 naming both checks", code, body)
	}
	r.set(checkDatapath, "")
	why := "pods of node n1 not listed yet: forbidden"
	r.follow(checkPods, func() string { return why })
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || strings.TrimSpace(body) != "pods: "+why {
		t.Errorf("/readyz = %d %q, want 503 with only the pods check", code, body)
	}
	why = ""
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d %q once every check passes, want 200", code, body)
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d, without the Go collector", code)
	}
}
