package e2e_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/walwatch/walwatch/test/wait"
)

// TestDPUpstreamTimeouts runs a dp with an upstream timeout flag and a
// route with a timeout of its own, stored through the cp: an upstream that
// never answers is a 504 after the route's timeout, or else the dp's, each
// logged once with the route, upstream and path.
func TestDPUpstreamTimeouts(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	c := startCP(t, pg, slotName(t, "dpto"))
	d := startDP(t, c.url, true, "--upstream-response-header-timeout", "250ms")
	hung := newHungUpstream(t)

	putRouteJSON(t, c, "hung", fmt.Sprintf(`{"uri": "/hung", "upstream": %q}`, hung.URL))
	putRouteJSON(t, c, "quick", fmt.Sprintf(`{"uri": "/quick", "upstream": %q, "timeout": {"response_header": "100ms"}}`, hung.URL))

	// The cp keeps the route's timeout, in its canonical form.
	r := mustStatus(t, "GET /routes/quick", get(t, c.url+"/routes/quick", ""), http.StatusOK)
	var got struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(r.body, &got); err != nil || !strings.Contains(string(got.Value), `"timeout":{"response_header":"100ms"}`) {
		t.Errorf("GET /routes/quick: %s, want its timeout kept (%v)", r, err)
	}

	for _, tc := range []struct{ route, path, after string }{
		{"hung", "/hung", "250ms"},   // the dp's flag
		{"quick", "/quick", "100ms"}, // the route's own
	} {
		wait.For(t, "dp to answer "+tc.path+" 504", func() bool {
			return get(t, d.url+tc.path, "").status == http.StatusGatewayTimeout
		})
		want := []string{"level=WARN", `msg="upstream timed out"`, "route=" + tc.route, "upstream=" + hung.URL,
			"path=" + tc.path, "timeout=response_header", "after=" + tc.after}
		wait.For(t, fmt.Sprintf("dp to log a line with all of %q", want), func() bool { return countAll(d.log(), want...) >= 1 })
	}
	if n := d.count(`msg="upstream failed"`); n != 0 {
		t.Errorf("dp logged %d upstream failures for timeouts", n)
	}
}

// TestDPCleansPaths sends requests as written on the wire (a client would
// clean them first): the dp matches and forwards the cleaned path, and
// refuses what cannot be cleaned.
func TestDPCleansPaths(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	c := startCP(t, pg, slotName(t, "dppath"))
	d := startDP(t, c.url, true)
	u1, u2 := newUpstream(t, "u1"), newUpstream(t, "u2")
	putRoute(t, c, "bar", "/anything/*", u1.URL)
	putRoute(t, c, "foo", "/get", u2.URL)
	waitRoute(t, d, "/anything/x", "u1")
	waitRoute(t, d, "/get", "u2")

	addr := strings.TrimPrefix(d.url, "http://")
	for _, tc := range []struct {
		target   string
		status   int
		upstream string
		path     string // as the upstream got it
	}{
		{"/anything/../get", 200, "u2", "/get"},
		{"/anything/%2e%2e/get", 200, "u2", "/get"},
		{"/anything//deep/./er/", 200, "u1", "/anything/deep/er/"},
		{"/../get", 400, "", ""},
		{"/anything/..%2Fget", 400, "", ""},
	} {
		status, e := rawRequest(t, addr, "GET "+tc.target)
		if status != tc.status || e.Upstream != tc.upstream || e.Path != tc.path {
			t.Errorf("GET %s: %d %+v, want %d from %q with path %q", tc.target, status, e, tc.status, tc.upstream, tc.path)
		}
	}
}

// TestRouteCredentialsRefused: an upstream with credentials is refused,
// and the refusal does not echo the password.
func TestRouteCredentialsRefused(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	c := startCP(t, pg, slotName(t, "creds"))
	r := call(t, http.MethodPut, c.url+"/routes/creds", "", `{"uri": "/x", "upstream": "http://user:s3cr3t@127.0.0.1:1"}`)
	if r.status != http.StatusBadRequest || r.json(t)["code"] != "invalid_argument" || strings.Contains(string(r.body), "s3cr3t") {
		t.Errorf("PUT a route with credentials: %s, want 400 invalid_argument without the password", r)
	}
	mustStatus(t, "GET /routes/creds", get(t, c.url+"/routes/creds", ""), http.StatusNotFound)
}

// newHungUpstream accepts requests and never answers them, until t ends.
func newHungUpstream(t testing.TB) *httptest.Server {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // first, so Close does not wait for ever
	return srv
}

// putRouteJSON puts a route's JSON as given.
func putRouteJSON(t testing.TB, c *cp, name, body string) {
	t.Helper()
	mustStatus(t, "PUT /routes/"+name, call(t, http.MethodPut, c.url+"/routes/"+name, "", body), http.StatusOK)
}

// countAll counts the lines of log that contain every one of subs.
func countAll(log string, subs ...string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// rawRequest writes requestLine (method and target) to addr as is and
// returns the status and, when an upstream answered, what it echoed.
func rawRequest(t testing.TB, addr, requestLine string) (int, echo) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(httpTimeout))
	if _, err := fmt.Fprintf(conn, "%s HTTP/1.1\r\nHost: walwatch.test\r\nConnection: close\r\n\r\n", requestLine); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s: %v", requestLine, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e echo
	if resp.Header.Get("X-Upstream") != "" {
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("%s: upstream answer %q: %v", requestLine, b, err)
		}
	}
	return resp.StatusCode, e
}
