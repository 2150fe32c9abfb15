package routes

import (
	"errors"
	"strings"
	"testing"
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
		{`{"uri": "/get", "upstream": "http://h", "extra": 1}`, false},
		{`{"uri": "/get", "upstream": "http://h"} {}`, false},
		{`{"uri": `, false},
		{``, false},
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
		if rt, ok := tb.Match(tt.path); !ok || rt.Upstream != tt.want {
			t.Errorf("Match(%s) = %v, %v; want %s", tt.path, rt, ok, tt.want)
		}
	}
	empty := tb.With("all", Route{}, true)
	if _, ok := empty.Match("/other"); ok {
		t.Error("removed route still matches")
	}
	if _, ok := tb.Match("/other"); !ok {
		t.Error("With changed the original table")
	}
}
