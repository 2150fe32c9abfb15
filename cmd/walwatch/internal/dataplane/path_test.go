package dataplane

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/walwatch/walwatch/cmd/walwatch/internal/routes"
)

func TestCleanPath(t *testing.T) {
	tests := []struct {
		target        string // a request target, as on the request line
		path, rawPath string // "" path: refused
	}{
		{"/", "/", "/"},
		{"/get", "/get", "/get"},
		{"/get?a=1", "/get", "/get"},
		{"/anything/", "/anything/", "/anything/"},
		{"/anything/../get", "/get", "/get"},
		{"/anything/./x", "/anything/x", "/anything/x"},
		{"/anything//x", "/anything/x", "/anything/x"},
		{"//anything", "/anything", "/anything"},
		{"/a/b/../../c", "/c", "/c"},
		{"/a/..", "/", "/"},
		{"/a/b/..", "/a/", "/a/"}, // RFC 3986: a trailing dot segment leaves a slash
		{"/a/b/.", "/a/b/", "/a/b/"},
		{"/a/b/./", "/a/b/", "/a/b/"},
		{"/...", "/...", "/..."},
		{"/a..b/..c", "/a..b/..c", "/a..b/..c"},
		// Encoded dots are dots.
		{"/anything/%2e%2e/get", "/get", "/get"},
		{"/anything/%2E%2e/get", "/get", "/get"},
		{"/anything/.%2e/get", "/get", "/get"},
		{"/anything/%2e/x", "/anything/x", "/anything/x"},
		// Kept segments keep the client's encoding.
		{"/a%20b/../c%3Bd/e%2ef", "/c;d/e.f", "/c%3Bd/e%2ef"},
		{"/caf%C3%A9", "/café", "/caf%C3%A9"},
		{"/x/(y)", "/x/(y)", "/x/(y)"},
		// Refused: climbing above the root, encoded '/' or NUL, not a path.
		{"/..", "", ""},
		{"/../get", "", ""},
		{"/%2e%2e/get", "", ""},
		{"/a/../../get", "", ""},
		{"/anything/..%2Fget", "", ""},
		{"/anything/..%2fget", "", ""},
		{"/a%2Fb", "", ""},
		{"/a%00b", "", ""},
		{"*", "", ""},
	}
	for _, tt := range tests {
		u, err := url.ParseRequestURI(tt.target)
		if err != nil {
			t.Fatalf("ParseRequestURI(%q): %v", tt.target, err)
		}
		path, rawPath, err := cleanPath(u)
		if tt.path == "" {
			if err == nil || !errors.Is(err, errBadPath) {
				t.Errorf("cleanPath(%q) = %q, %q, %v; want errBadPath", tt.target, path, rawPath, err)
			}
			continue
		}
		if err != nil || path != tt.path || rawPath != tt.rawPath {
			t.Errorf("cleanPath(%q) = %q, %q, %v; want %q, %q", tt.target, path, rawPath, err, tt.path, tt.rawPath)
		}
		// The escaped form sent on decodes to the path matched.
		if d, err := url.PathUnescape(rawPath); err != nil || d != path {
			t.Errorf("cleanPath(%q): raw path %q decodes to %q, %v; want %q", tt.target, rawPath, d, err, path)
		}
	}
	// Absolute form with no path: "/".
	if path, _, err := cleanPath(&url.URL{Scheme: "http", Host: "h"}); err != nil || path != "/" {
		t.Errorf("cleanPath(http://h) = %q, %v; want /", path, err)
	}
}

// The proxy matches the cleaned path and sends it on: /anything/../get is
// /get, not a request under /anything/*. Requests go on the wire as
// written, since a client would clean the path first.
func TestProxyCleansPath(t *testing.T) {
	anything := newUpstream(t, echo("anything"))
	get := newUpstream(t, echo("get"))
	p := newTestProxy(t, Config{}, map[string]routes.Route{
		"anything": {URI: "/anything/*", Upstream: anything.URL},
		"get":      {URI: "/get", Upstream: get.URL},
	}, nil)

	tests := []struct {
		method, target string
		status         int
		body           string // the upstream's echo, or the start of the proxy's error
	}{
		{"GET", "/get", 200, "get /get"},
		{"GET", "/anything/../get", 200, "get /get"},
		{"GET", "/anything/%2e%2e/get", 200, "get /get"},
		{"GET", "/anything/.%2E/get?a=1", 200, "get /get?a=1"},
		{"GET", "/anything//x/./y/", 200, "anything /anything/x/y/"},
		{"GET", "/anything/a%20b/../c%3Bd", 200, "anything /anything/c%3Bd"},
		{"GET", "/get/../anything/x", 200, "anything /anything/x"},
		{"GET", "/x/../anything/", 200, "anything /anything/"},
		{"GET", "/anything/x/../..", 404, "no route"}, // "/", which no route has
		{"GET", "/anything/../../get", 400, "bad path"},
		{"GET", "/..", 400, "bad path"},
		{"GET", "/anything/..%2Fget", 400, "bad path"},
		{"GET", "/anything/a%2Fb", 400, "bad path"},
		{"GET", "/anything/a%00b", 400, "bad path"},
		{"GET", "*", 400, "bad path"}, // (Go's server answers OPTIONS * itself)
		{"GET", "http://walwatch.test/anything/../get", 200, "get /get"},
	}
	for _, tt := range tests {
		status, body := rawGet(t, p.addr, tt.method, tt.target)
		if status != tt.status || !strings.HasPrefix(body, tt.body) {
			t.Errorf("%s %s: %d %q, want %d %q", tt.method, tt.target, status, body, tt.status, tt.body)
		}
	}
	if n := len(p.log.Lines("level=WARN")); n != 0 {
		t.Errorf("%d WARN lines for requests the proxy answered itself", n)
	}
}
