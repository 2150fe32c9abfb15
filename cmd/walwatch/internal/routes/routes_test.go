package routes

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		body string
		ok   bool
	}{
		{`{"uri": "/get", "upstream": "http://127.0.0.1:8080"}`, true},
		{`{"uri": "/api/*", "upstream": "https://example.test"}`, true},
		{`{"uri": "get", "upstream": "http://127.0.0.1:8080"}`, false},
		{`{"uri": "/get"}`, false},
		{`{"uri": "/get", "upstream": "127.0.0.1:8080"}`, false},
		{`{"uri": "/get", "upstream": "ftp://h"}`, false},
		{`{"uri": "/g*et", "upstream": "http://h"}`, false},
		// URIs are clean paths: others would never match.
		{`{"uri": "/", "upstream": "http://h"}`, true},
		{`{"uri": "/*", "upstream": "http://h"}`, true},
		{`{"uri": "/api/v1/", "upstream": "http://h"}`, true},
		{`{"uri": "/api*", "upstream": "http://h"}`, true},
		{`{"uri": "/a/../b", "upstream": "http://h"}`, false},
		{`{"uri": "/a//b", "upstream": "http://h"}`, false},
		{`{"uri": "/a/./*", "upstream": "http://h"}`, false},
		{`{"uri": "/a/..", "upstream": "http://h"}`, false},
		{`{"uri": "//*", "upstream": "http://h"}`, false},
		{`{"uri": "/get", "upstream": "http://h", "extra": 1}`, false},
		{`{"uri": "/get", "upstream": "http://h"} {}`, false},
		{`{"uri": `, false},
		{``, false},

		// Credentials are refused: never sent, and echoed and logged.
		{`{"uri": "/get", "upstream": "http://user:secret@h"}`, false},
		{`{"uri": "/get", "upstream": "http://user@h"}`, false},
		{`{"uri": "/get", "upstream": "https://:secret@h:8443/base"}`, false},
		{`{"uri": "/get", "upstream": "http://@h"}`, false},
		// A fragment is never sent; a query is (added to each request's).
		{`{"uri": "/get", "upstream": "http://h/#frag"}`, false},
		{`{"uri": "/get", "upstream": "http://h#"}`, false},
		{`{"uri": "/get", "upstream": "http://h/base?key=v"}`, true},
		{`{"uri": "/get", "upstream": "http://h/';select 1;--"}`, true},

		// Timeouts: Go duration strings, positive, bounded, known fields.
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"connect": "2s", "response_header": "10s", "idle": "1m30s"}}`, true},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"idle": "250ms"}}`, true},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {}}`, true},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"idle": "24h"}}`, true},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"idle": "24h0m1s"}}`, false},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"connect": "0s"}}`, false},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"connect": "-1s"}}`, false},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"connect": 5}}`, false},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"connect": "5"}}`, false},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"connect": "five seconds"}}`, false},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"connect": null}}`, false},
		{`{"uri": "/get", "upstream": "http://h", "timeout": {"read": "5s"}}`, false},
		{`{"uri": "/get", "upstream": "http://h", "timeout": 5}`, false},
		{`{"uri": "/get", "upstream": "http://h", "timeout": "5s"}`, false},
	}
	for _, tt := range tests {
		_, err := Decode(strings.NewReader(tt.body))
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("Decode(%s) = %v, want ok=%v", tt.body, err, tt.ok)
		}
	}
}

func TestTableMatch(t *testing.T) {
	tb := NewTable(map[string]Route{
		"get":  {URI: "/get", Upstream: "http://a"},
		"api":  {URI: "/api/*", Upstream: "http://b"},
		"apiv": {URI: "/api/v2/*", Upstream: "http://c"},
		"all":  {URI: "/*", Upstream: "http://d"},
	})
	tests := []struct{ path, want string }{
		{"/get", "http://a"},
		{"/get/x", "http://d"},
		{"/api/x", "http://b"},
		{"/api/v2/x", "http://c"},
		{"/other", "http://d"},
	}
	for _, tt := range tests {
		if _, rt, ok := tb.Match(tt.path); !ok || rt.Upstream != tt.want {
			t.Errorf("Match(%s) = %v, %v; want %s", tt.path, rt, ok, tt.want)
		}
	}
	empty := tb.Without("all")
	if _, _, ok := empty.Match("/other"); ok {
		t.Error("removed route still matches")
	}
	if _, _, ok := tb.Match("/other"); !ok {
		t.Error("With changed the original table")
	}
}

// A match names its route and carries all of it, prefix routes included:
// the proxy logs the name and applies the route's timeouts.
func TestTableMatchWhole(t *testing.T) {
	api := Route{URI: "/api/*", Upstream: "http://b", Timeout: Timeouts{Idle: Duration(time.Second)}}
	get := Route{URI: "/get", Upstream: "http://a", Timeout: Timeouts{Connect: Duration(time.Second)}}
	tb := NewTable(map[string]Route{"api": api, "get": get})
	for path, want := range map[string]struct {
		name string
		rt   Route
	}{"/api/x": {"api", api}, "/get": {"get", get}} {
		if name, rt, ok := tb.Match(path); !ok || name != want.name || rt != want.rt {
			t.Errorf("Match(%s) = %q %+v %v; want %q %+v", path, name, rt, ok, want.name, want.rt)
		}
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"foo", true},
		{"foo-bar_1.2", true},
		{"名前", true},
		{`'; drop table x;--`, true},
		{strings.Repeat("n", MaxNameLen), true},
		{"", false},
		{strings.Repeat("n", MaxNameLen+1), false},
		{"a/b", false},
		{"a\x00b", false}, // NUL
		{"\x00", false},   // NUL alone
		{"a\xffb", false}, // not UTF-8
		{"\xc3", false},   // a truncated sequence
		{"a\nb", false},   // control characters
		{"a\tb", false},
		{"a\x1bb", false},
		{"a\x7fb", false},   // DEL
		{"a\u0085b", false}, // C1 control (NEL)
		{".", false},
		{"..", false},
		{"...", true},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// A route is stored in the canonical form json.Marshal gives it: timeouts
// as duration strings, left out when unset, and read back the same.
func TestRouteJSON(t *testing.T) {
	tests := []struct {
		rt   Route
		want string
	}{
		{Route{URI: "/get", Upstream: "http://h"}, `{"uri":"/get","upstream":"http://h"}`},
		{Route{URI: "/get", Upstream: "http://h", Timeout: Timeouts{Connect: Duration(2 * time.Second), Idle: Duration(90 * time.Second)}},
			`{"uri":"/get","upstream":"http://h","timeout":{"connect":"2s","idle":"1m30s"}}`},
		{Route{URI: "/get", Upstream: "http://h", Timeout: Timeouts{ResponseHeader: Duration(1500 * time.Millisecond)}},
			`{"uri":"/get","upstream":"http://h","timeout":{"response_header":"1.5s"}}`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.rt)
		if err != nil || string(b) != tt.want {
			t.Errorf("Marshal(%+v) = %s, %v; want %s", tt.rt, b, err, tt.want)
			continue
		}
		back, err := Parse(b)
		if err != nil || back != tt.rt {
			t.Errorf("Parse(%s) = %+v, %v; want %+v", b, back, err, tt.rt)
		}
	}
}

// No error quotes an upstream's password, so neither the 400 nor a data
// plane's log of a stored route leaks it.
func TestValidateRedactsPassword(t *testing.T) {
	for _, up := range []string{"http://user:s3cr3t@h", "http://user:s3cr3t@h:bad", "ftp://user:s3cr3t@h", "http://user:s3cr3t@h/#x"} {
		err := Route{URI: "/get", Upstream: up}.Validate()
		if err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("Validate(%s) = %v, want ErrInvalid", up, err)
		} else if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("Validate(%s) = %v: quotes the password", up, err)
		}
	}
}

func TestTimeoutsOr(t *testing.T) {
	d := Timeouts{Connect: 1, ResponseHeader: 2, Idle: 3}
	if got := (Timeouts{ResponseHeader: 20}).Or(d); got != (Timeouts{Connect: 1, ResponseHeader: 20, Idle: 3}) {
		t.Errorf("Or = %+v", got)
	}
}
