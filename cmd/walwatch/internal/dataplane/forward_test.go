package dataplane

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/walwatch/walwatch/cmd/walwatch/internal/routes"
	"github.com/walwatch/walwatch/wire"
)

// short is a timeout the tests wait out; long is one they never reach.
const (
	short = 100 * time.Millisecond
	long  = time.Hour
)

// patient is a proxy's configuration that times out nothing a test waits for.
func patient() Config {
	return Config{Timeouts: routes.Timeouts{Connect: dur(long), ResponseHeader: dur(long), Idle: dur(long)}}
}

// checkTimedOut checks the one WARN a timeout logs: which timeout, the
// route, its upstream and the path.
func checkTimedOut(t *testing.T, p *testProxy, timeout, route, upstream, path string) {
	t.Helper()
	warns := p.log.Lines("level=WARN")
	want := []string{`msg="upstream timed out"`, "timeout=" + timeout, "route=" + route, "upstream=" + upstream, "path=" + path}
	if len(warns) != 1 || len(p.log.Lines(want...)) != 1 {
		t.Errorf("WARN lines %q, want one with %q", warns, want)
	}
}

// An upstream that accepts the connection and never answers is a 504 once
// the response header timeout has passed: the data plane's, or the
// route's own.
func TestResponseHeaderTimeout(t *testing.T) {
	t.Run("data plane default", func(t *testing.T) {
		up := blackHole(t)
		p := newTestProxy(t, Config{Timeouts: routes.Timeouts{ResponseHeader: dur(short)}},
			map[string]routes.Route{"hole": {URI: "/hole", Upstream: up}}, nil)
		if status, body := get(t, p.url+"/hole"); status != http.StatusGatewayTimeout {
			t.Fatalf("GET /hole: %d %q, want 504", status, body)
		}
		checkTimedOut(t, p, "response_header", "hole", up, "/hole")
	})
	t.Run("route", func(t *testing.T) {
		// Two routes to one upstream, one patient, one not: each keeps its
		// own timeouts, whichever is used first.
		up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) {
			if r.URL.Path == "/slow" {
				<-release
			}
			io.WriteString(w, "ok")
		})
		p := newTestProxy(t, patient(), map[string]routes.Route{
			"fast": {URI: "/fast", Upstream: up.URL},
			"slow": {URI: "/slow", Upstream: up.URL, Timeout: routes.Timeouts{ResponseHeader: dur(short)}},
		}, nil)
		if status, body := get(t, p.url+"/fast"); status != http.StatusOK {
			t.Fatalf("GET /fast: %d %q, want 200", status, body)
		}
		if status, body := get(t, p.url+"/slow"); status != http.StatusGatewayTimeout {
			t.Fatalf("GET /slow: %d %q, want 504", status, body)
		}
		checkTimedOut(t, p, "response_header", "slow", up.URL, "/slow")

		// The route changes: its new timeouts apply at once.
		p.Apply(routeEvent(t, 2, "slow", routes.Route{URI: "/slow", Upstream: up.URL, Timeout: routes.Timeouts{ResponseHeader: dur(2 * short)}}))
		if status, body := get(t, p.url+"/slow"); status != http.StatusGatewayTimeout {
			t.Fatalf("GET /slow after the change: %d %q, want 504", status, body)
		}
		if n := len(p.log.Lines("timeout=response_header", "after=200ms")); n != 1 {
			t.Errorf("%d WARN lines for the changed route's timeout (200ms), want 1", n)
		}
	})
}

// An upstream that stops taking the request's body is timed out like one
// that does not answer.
func TestResponseHeaderTimeoutWhileSending(t *testing.T) {
	up := blackHole(t)
	p := newTestProxy(t, Config{Timeouts: routes.Timeouts{ResponseHeader: dur(short)}},
		map[string]routes.Route{"hole": {URI: "/hole", Upstream: up}}, nil)
	// Far more than socket buffers hold, so sending it blocks.
	req := httptest.NewRequest(http.MethodPost, "/hole", io.LimitReader(zeros{}, 1<<30))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, req.WithContext(ctx))
	if rec.Code != http.StatusGatewayTimeout {
		t.Fatalf("POST /hole: %d %q, want 504", rec.Code, rec.Body)
	}
	checkTimedOut(t, p, "response_header", "hole", up, "/hole")
}

// zeros reads as zero bytes for ever.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// A connection that does not open within the connect timeout is a 504.
func TestConnectTimeout(t *testing.T) {
	hang := func(p *Proxy) {
		p.dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			<-ctx.Done() // an address that never answers the SYN
			return nil, ctx.Err()
		}
	}
	const up = "http://192.0.2.1:80" // TEST-NET-1: never dialed
	p := newTestProxy(t, patient(), map[string]routes.Route{
		"far": {URI: "/far", Upstream: up, Timeout: routes.Timeouts{Connect: dur(short)}},
	}, hang)
	if status, body := get(t, p.url+"/far"); status != http.StatusGatewayTimeout {
		t.Fatalf("GET /far: %d %q, want 504", status, body)
	}
	checkTimedOut(t, p, "connect", "far", up, "/far")

	p = newTestProxy(t, Config{Timeouts: routes.Timeouts{Connect: dur(short)}},
		map[string]routes.Route{"far": {URI: "/far", Upstream: up}}, hang)
	if status, body := get(t, p.url+"/far"); status != http.StatusGatewayTimeout {
		t.Fatalf("GET /far (the data plane's timeout): %d %q, want 504", status, body)
	}
	checkTimedOut(t, p, "connect", "far", up, "/far")
}

// Other failures stay 502.
func TestUpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	p := newTestProxy(t, Config{}, map[string]routes.Route{"down": {URI: "/down", Upstream: up}}, nil)
	if status, body := get(t, p.url+"/down"); status != http.StatusBadGateway {
		t.Fatalf("GET /down: %d %q, want 502", status, body)
	}
	if n := len(p.log.Lines("level=WARN", `msg="upstream failed"`, "route=down", "path=/down")); n != 1 {
		t.Errorf("%d WARN lines for the failure, want 1:\n%s", n, p.log)
	}
}

// A response whose upstream stops sending its body for the idle timeout is
// cut off (its status has gone already), and logged once.
func TestIdleTimeout(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		route routes.Timeouts
	}{
		{"data plane default", Config{Timeouts: routes.Timeouts{Idle: dur(short)}}, routes.Timeouts{}},
		{"route", patient(), routes.Timeouts{Idle: dur(short)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) {
				io.WriteString(w, "first\n")
				w.(http.Flusher).Flush()
				<-release
			})
			p := newTestProxy(t, tc.cfg, map[string]routes.Route{"stall": {URI: "/stall", Upstream: up.URL, Timeout: tc.route}}, nil)
			client := &http.Client{Timeout: waitTimeout}
			resp, err := client.Get(p.url + "/stall")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /stall: %s, want 200", resp.Status)
			}
			b, err := io.ReadAll(resp.Body)
			if string(b) != "first\n" || err == nil || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Client.Timeout") {
				t.Fatalf("body %q, %v: want \"first\\n\" cut off by the proxy", b, err)
			}
			checkTimedOut(t, p, "idle", "stall", up.URL, "/stall")
		})
	}
}

// Responses stream: the client has each part as soon as the upstream
// sends it.
func TestStreaming(t *testing.T) {
	next := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) {
		for _, part := range []string{"one\n", "two\n"} {
			io.WriteString(w, part)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-release:
				return
			}
		}
		io.WriteString(w, "end\n")
	})
	p := newTestProxy(t, Config{Timeouts: routes.Timeouts{Idle: dur(time.Minute)}},
		map[string]routes.Route{"stream": {URI: "/stream", Upstream: up.URL}}, nil)
	client := &http.Client{Timeout: waitTimeout}
	resp, err := client.Get(p.url + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	for _, want := range []string{"one\n", "two\n", "end\n"} {
		line, err := r.ReadString('\n')
		if err != nil || line != want {
			t.Fatalf("read %q, %v; want %q before the upstream goes on", line, err, want)
		}
		if want != "end\n" {
			select {
			case next <- struct{}{}:
			case <-time.After(waitTimeout):
				t.Fatal("the upstream stopped")
			}
		}
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Errorf("after the last part: %v, want EOF", err)
	}
}

// routeEvent is the watch event that puts rt at name.
func routeEvent(t *testing.T, rev int64, name string, rt routes.Route) []wire.Event {
	t.Helper()
	return []wire.Event{{Type: "PUT", Key: routes.Key(name), Value: string(mustJSON(t, rt)), Revision: rev}}
}
