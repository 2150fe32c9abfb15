package dataplane

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walwatch/walwatch/cmd/walwatch/internal/routes"
	"github.com/walwatch/walwatch/test/logs"
)

// waitTimeout bounds every wait for something that should happen long
// before; it is not a timing assertion.
const waitTimeout = 30 * time.Second

// testProxy is a Proxy with routes, served on a real server (as dp serves
// it), and its log.
type testProxy struct {
	*Proxy
	url  string // http://addr
	addr string
	log  *logs.Buffer
}

// newTestProxy serves a proxy with cfg and the routes by name; before,
// when not nil, changes it before it serves anything.
func newTestProxy(t *testing.T, cfg Config, byName map[string]routes.Route, before func(*Proxy)) *testProxy {
	t.Helper()
	lb := &logs.Buffer{}
	p := New(slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), prometheus.NewRegistry(), cfg)
	kvs := map[string][]byte{}
	for name, rt := range byName {
		if err := rt.Validate(); err != nil {
			t.Fatalf("route %s: %v", name, err)
		}
		kvs[routes.Key(name)] = mustJSON(t, rt)
	}
	p.Replace(1, kvs)
	if got := p.Table().Len(); got != len(byName) {
		t.Fatalf("table has %d routes, want %d:\n%s", got, len(byName), lb)
	}
	if before != nil {
		before(p)
	}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", lb)
		}
	})
	return &testProxy{Proxy: p, url: srv.URL, addr: srv.Listener.Addr().String(), log: lb}
}

// newUpstream serves h until t ends. Handlers may block on release, which
// is closed when t ends, before the server closes (which waits for them).
func newUpstream(t *testing.T, h func(w http.ResponseWriter, r *http.Request, release <-chan struct{})) *httptest.Server {
	ch := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h(w, r, ch) }))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(ch) }) // runs first
	return srv
}

// echo is an upstream handler that answers with the request line's target,
// as it arrived.
func echo(name string) func(http.ResponseWriter, *http.Request, <-chan struct{}) {
	return func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		w.Header().Set("X-Upstream", name)
		fmt.Fprintf(w, "%s %s", name, r.RequestURI)
	}
}

// blackHole is an upstream that accepts connections and never reads or
// answers; it returns its URL.
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// rawGet sends "METHOD target HTTP/1.1" exactly as given, so no client
// cleans the path first, and returns the status and body.
func rawGet(t *testing.T, addr, method, target string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: walwatch.test\r\nConnection: close\r\n\r\n", method, target); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, target, err)
	}
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// get does GET url with a bounded wait; status -1 and the error's text when
// it gets no answer.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: waitTimeout}
	resp, err := client.Get(url)
	if err != nil {
		return -1, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return -1, err.Error()
	}
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func mustJSON(t *testing.T, rt routes.Route) []byte {
	t.Helper()
	b, err := json.Marshal(rt)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dur is a route timeout.
func dur(d time.Duration) routes.Duration { return routes.Duration(d) }
