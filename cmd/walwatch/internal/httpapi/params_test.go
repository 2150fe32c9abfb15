package httpapi

import (
	"errors"
	"net/http"
	"strings"
	"testing"
)

// TestStrictParams sends parameters that are wrong in every way: each is a
// 400 invalid_argument saying what is wrong, refused before the database is
// asked (it is down here: a request that got that far would be a 503).
func TestStrictParams(t *testing.T) {
	t.Parallel()
	s, _ := newOfflineServer(t)
	const big = "99999999999999999999" // past int64
	cases := []struct {
		name, method, target string
		header               []string
		want                 string // in the error message
	}{
		{"limit with trailing junk", "GET", "/v1/kv/a?prefix=true&limit=1x", nil, `limit="1x" must be a non-negative integer`},
		{"limit with a plus sign", "GET", "/v1/kv/a?prefix=true&limit=%2B1", nil, `limit="+1"`},
		{"limit in hex", "GET", "/v1/kv/a?prefix=true&limit=0x10", nil, `limit="0x10"`},
		{"limit with an underscore", "GET", "/v1/kv/a?prefix=true&limit=1_0", nil, `limit="1_0"`},
		{"limit with a space", "GET", "/v1/kv/a?prefix=true&limit=%201", nil, `limit=" 1"`},
		{"limit in exponent form", "GET", "/v1/kv/a?prefix=true&limit=1e3", nil, `limit="1e3"`},
		{"limit negative", "GET", "/v1/kv/a?prefix=true&limit=-1", nil, `limit="-1"`},
		{"limit empty", "GET", "/v1/kv/a?prefix=true&limit=", nil, `limit=""`},
		{"limit past int64", "GET", "/v1/kv/a?prefix=true&limit=" + big, nil, "limit=" + big + " is out of range"},
		{"limit twice", "GET", "/v1/kv/a?prefix=true&limit=1&limit=2", nil, `parameter "limit" is given 2 times`},
		{"rev with trailing junk", "GET", "/v1/kv/a?rev=3x", nil, `rev="3x" must be a revision`},
		{"rev with a plus sign", "GET", "/routes/foo?rev=%2B3", nil, `rev="+3"`},
		{"rev negative", "GET", "/routes/?rev=-1", nil, `rev="-1"`},
		{"rev empty", "GET", "/routes/foo?rev=", nil, `rev=""`},
		{"rev past int64", "GET", "/v1/kv/a?rev=" + big, nil, "rev=" + big + " is out of range"},
		{"rev twice", "GET", "/v1/kv/a?rev=3&rev=abc", nil, `parameter "rev" is given 2 times`},
		{"rev twice on a route", "GET", "/routes/foo?rev=3&rev=3", nil, `parameter "rev" is given 2 times`},
		{"rev twice on the list", "GET", "/routes/?rev=3&rev=4", nil, `parameter "rev" is given 2 times`},
		{"prefix twice", "GET", "/v1/kv/a?prefix=true&prefix=false", nil, `parameter "prefix" is given 2 times`},
		{"prefix twice on a delete", "DELETE", "/v1/kv/a?prefix=true&prefix=true", nil, `parameter "prefix" is given 2 times`},
		{"prefix=yes", "GET", "/v1/kv/a?prefix=yes", nil, `prefix="yes" must be true or false`},
		{"prefix without a value", "DELETE", "/v1/kv/a?prefix", nil, `prefix="" must be true or false`},
		{"a bad escape", "GET", "/v1/kv/a?rev=%zz", nil, "query string"},
		{"unknown parameter on a read", "GET", "/v1/kv/a?revision=3", nil, `unknown parameter "revision" (this endpoint takes prefix, rev, limit)`},
		{"unknown parameter on a put", "PUT", "/v1/kv/a?rev=3", nil, `unknown parameter "rev" (this endpoint takes prefix, lease)`},
		{"unknown parameter on a delete", "DELETE", "/v1/kv/a?limit=3", nil, `unknown parameter "limit"`},
		{"unknown parameter on the list", "GET", "/routes/?limit=3", nil, `unknown parameter "limit" (this endpoint takes rev)`},
		{"unknown parameter on a route put", "PUT", "/routes/foo?force=1", nil, `unknown parameter "force" (this endpoint takes none)`},
		{"unknown parameter on a route delete", "DELETE", "/routes/foo?rev=1", nil, `unknown parameter "rev"`},
		{"unknown parameter on status", "GET", "/v1/status?verbose=true", nil, `unknown parameter "verbose"`},
		{"unknown parameter on compact", "POST", "/v1/compact?revision=3", nil, `unknown parameter "revision"`},
		{"unknown parameter on a watch", "GET", "/v1/watch?prefix=/a&start=3", nil, `unknown parameter "start" (this endpoint takes key, prefix, rev)`},
		{"watch key twice", "GET", "/v1/watch?key=a&key=b", nil, `parameter "key" is given 2 times`},
		{"watch prefix twice", "GET", "/v1/watch?prefix=/a&prefix=/b", nil, `parameter "prefix" is given 2 times`},
		{"watch rev twice", "GET", "/v1/watch?prefix=/a&rev=3&rev=abc", nil, `parameter "rev" is given 2 times`},
		{"watch rev with trailing junk", "GET", "/v1/watch?prefix=/a&rev=1x", nil, `rev="1x"`},
		{"watch rev past int64", "GET", "/v1/watch?prefix=/a&rev=" + big, nil, "rev=" + big + " is out of range"},
		{"Last-Event-ID past int64", "GET", "/v1/watch?prefix=/a", []string{"Last-Event-ID", big}, "Last-Event-ID " + big + " is out of range"},
		{"Last-Event-ID with no next revision", "GET", "/v1/watch?prefix=/a", []string{"Last-Event-ID", "9223372036854775807"}, "Last-Event-ID 9223372036854775807 is out of range"},
		{"Last-Event-ID negative", "GET", "/v1/watch?prefix=/a", []string{"Last-Event-ID", "-1"}, `Last-Event-ID "-1" is not a revision`},
		{"Last-Event-ID with a plus sign", "GET", "/v1/watch?prefix=/a", []string{"Last-Event-ID", "+1"}, `Last-Event-ID "+1" is not a revision`},
		{"Last-Event-ID with junk", "GET", "/v1/watch?prefix=/a", []string{"Last-Event-ID", "1x"}, `Last-Event-ID "1x" is not a revision`},
		{"Last-Event-ID twice", "GET", "/v1/watch?prefix=/a", []string{"Last-Event-ID", "1", "Last-Event-ID", "2"}, "Last-Event-ID is given 2 times"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := do(t, s, tc.method, tc.target, "", tc.header...)
			if a.status != http.StatusBadRequest || a.err.Code != "invalid_argument" || !strings.Contains(a.err.Error, tc.want) {
				t.Errorf("%s %s: %d %s, want 400 invalid_argument saying %q", tc.method, tc.target, a.status, a.body, tc.want)
			}
		})
	}
}

// TestGoodParams: what the API documents is accepted. The database is down,
// so a request that got past its parameters is a 503.
func TestGoodParams(t *testing.T) {
	t.Parallel()
	s, _ := newOfflineServer(t)
	for _, target := range []string{
		"/v1/kv/a", "/v1/kv/a?prefix=true", "/v1/kv/a?prefix=false", "/v1/kv/a?rev=0", "/v1/kv/a?rev=12",
		"/v1/kv/a?prefix=true&rev=9223372036854775807&limit=0", "/v1/kv/a?limit=007&prefix=true",
		"/routes/foo?rev=3", "/routes/?rev=3", "/routes/", "/v1/status",
	} {
		if a := do(t, s, "GET", target, ""); a.status != http.StatusServiceUnavailable {
			t.Errorf("GET %s: %d %s, want its parameters accepted (503: the database is down)", target, a.status, a.body)
		}
	}
}

func TestDecimal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
		err  error
	}{
		{"0", 0, nil},
		{"42", 42, nil},
		{"0042", 42, nil},
		{"9223372036854775807", 1<<63 - 1, nil},
		{"9223372036854775808", 0, errOutOfRange},
		{"99999999999999999999", 0, errOutOfRange},
		{"", 0, errNotDecimal},
		{"-1", 0, errNotDecimal},
		{"+1", 0, errNotDecimal},
		{"1x", 0, errNotDecimal},
		{" 1", 0, errNotDecimal},
		{"1_000", 0, errNotDecimal},
		{"0x1f", 0, errNotDecimal},
		{"١", 0, errNotDecimal}, // a digit, but not an ASCII one
	} {
		got, err := decimal(tc.in)
		if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("decimal(%q) = %d, %v; want %d, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}
