package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/walwatch/walwatch/test/logs"
)

// The demo on a private PostgreSQL of its own: it prints its walkthrough with
// the addresses it really bound, the walkthrough's first steps work, and
// Ctrl-C stops everything cleanly.
func TestDemo(t *testing.T) {
	out := &logs.Buffer{}
	cmd := newRootCommand(out, &logs.Buffer{})
	cmd.SetArgs([]string{"demo", "--cp-listen", "127.0.0.1:0", "--dp-listen", "127.0.0.1:0", "--dp-admin-listen", "127.0.0.1:0",
		"--upstream-a", "127.0.0.1:0", "--upstream-b", "127.0.0.1:0", "--etcd-listen", "127.0.0.1:0"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("demo exited with %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("demo did not stop within 60s of Ctrl-C")
		}
	}()
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(out.String(), "Ctrl-C stops everything") {
		if time.Now().After(deadline) {
			t.Fatalf("no walkthrough printed: %q", out.String())
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	field := func(name string) string {
		m := regexp.MustCompile(name + `\s+(http://\S+)`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("no %s address in %q", name, out.String())
		}
		return m[1]
	}
	cp, dp, upstreamA, etcdURL := field("control plane"), field("data plane"), field("upstreams"), field("etcd API")
	etcdAddr := strings.TrimPrefix(etcdURL, "http://")
	for _, want := range []string{"etcdctl --endpoints " + etcdAddr + " put /routes/baz", `Endpoints: []string{"` + etcdAddr + `"}`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the walkthrough has no %q:\n%s", want, out.String())
		}
	}

	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(dp + "/get"); code != http.StatusNotFound || !strings.Contains(body, "no route") {
		t.Fatalf("before any route: %d %q", code, body)
	}
	req, _ := http.NewRequest(http.MethodPut, cp+"/routes/foo", strings.NewReader(`{"uri": "/get", "upstream": "`+upstreamA+`"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("put route: %v %v", resp, err)
	}
	resp.Body.Close()
	waitRouted := func(path string) {
		t.Helper()
		for {
			code, body := get(dp + path)
			if code == http.StatusOK && strings.Contains(body, `"upstream": "upstream-a"`) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("dp never routed %s: %d %q", path, code, body)
			}
			time.Sleep(5 * time.Millisecond) // polling interval
		}
	}
	waitRouted("/get")

	// The etcd API's steps: a route put with the etcd client is followed
	// by the data plane too.
	etcd, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdAddr}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	st, err := etcd.Status(ctx, etcdAddr)
	if err != nil || st.Version != "3.7.3" {
		t.Fatalf("etcd Status: %v, %v", st, err)
	}
	if _, err := etcd.Put(ctx, "/routes/baz", `{"uri": "/baz", "upstream": "`+upstreamA+`"}`); err != nil {
		t.Fatalf("etcd put: %v", err)
	}
	waitRouted("/baz")
}

// With --cp=false the walkthrough says how to start the control plane it
// expects, on the demo's database and at the addresses it was given.
func TestDemoCPCommand(t *testing.T) {
	const url = "postgres://postgres@127.0.0.1:5432/walwatch"
	for _, tc := range []struct {
		listen, etcd, want string
	}{
		{defaultCPListen, defaultEtcdListen, "walwatch cp --postgres '" + url + "'"},
		{"127.0.0.1:9999", defaultEtcdListen, "walwatch cp --postgres '" + url + "' --listen 127.0.0.1:9999"},
		{defaultCPListen, "", "walwatch cp --postgres '" + url + "' --etcd-listen ''"},
	} {
		var out strings.Builder
		printWalkthrough(&out, url, true, "", demoAddrs{cp: "http://" + tc.listen, cpCommand: cpCommand(url, tc.listen, tc.etcd)})
		want := "control plane  http://" + tc.listen + "  (not started: run " + tc.want + ")\n"
		if !strings.Contains(out.String(), want) {
			t.Errorf("listen %q, etcd %q: no %q in\n%s", tc.listen, tc.etcd, want, out.String())
		}
	}
}
