package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/walwatch/walwatch/store"
)

// TestLeaseBadInput sends lease requests that are wrong in every way: each
// is refused with its status and a message saying what is wrong, before the
// database is asked (it is down here: a request that got that far would be
// a 503).
func TestLeaseBadInput(t *testing.T) {
	t.Parallel()
	s, _ := newOfflineServer(t)
	const big = "99999999999999999999" // past int64
	cases := []struct {
		name, method, target, body string
		status                     int
		want                       string // in the error message
	}{
		// Lease IDs in the path.
		{"ID with junk", "GET", "/v1/leases/12x", "", 400, `"12x" is not a lease ID (decimal digits, or 0x and hex digits)`},
		{"ID in hex without 0x", "GET", "/v1/leases/694d77aa9e38260f", "", 400, `"694d77aa9e38260f" is not a lease ID`},
		{"ID negative", "DELETE", "/v1/leases/-5", "", 400, `"-5" is not a lease ID`},
		{"ID with a plus sign", "POST", "/v1/leases/%2B5/keepalive", "", 400, `"+5" is not a lease ID`},
		{"ID past int64", "GET", "/v1/leases/" + big, "", 400, "lease ID " + big + " is out of range"},
		{"hex ID past int64", "GET", "/v1/leases/0x8000000000000000", "", 400, "lease ID 0x8000000000000000 is out of range"},
		{"hex ID too long", "GET", "/v1/leases/0x00000000000000001", "", 400, `"0x00000000000000001" is not a lease ID`},
		{"hex ID empty", "GET", "/v1/leases/0x", "", 400, `"0x" is not a lease ID`},
		{"hex ID with a sign", "GET", "/v1/leases/0x-1", "", 400, `"0x-1" is not a lease ID`},
		{"hex ID with an underscore", "GET", "/v1/leases/0x1_0", "", 400, `"0x1_0" is not a lease ID`},
		// ?lease= on a put.
		{"lease with junk", "PUT", "/v1/kv/a?lease=1x", "v", 400, `lease="1x" must be a lease ID`},
		{"lease negative", "PUT", "/v1/kv/a?lease=-1", "v", 400, `lease="-1"`},
		{"lease empty", "PUT", "/v1/kv/a?lease=", "v", 400, `lease=""`},
		{"lease past int64", "PUT", "/v1/kv/a?lease=" + big, "v", 400, "lease=" + big + " is out of range"},
		{"lease twice", "PUT", "/v1/kv/a?lease=1&lease=2", "v", 400, `parameter "lease" is given 2 times`},
		{"lease on a read", "GET", "/v1/kv/a?lease=1", "", 400, `unknown parameter "lease" (this endpoint takes prefix, rev, limit)`},
		{"lease on a delete", "DELETE", "/v1/kv/a?lease=1", "", 400, `unknown parameter "lease" (this endpoint takes prefix)`},
		// Parameters the lease endpoints do not take.
		{"keys=yes", "GET", "/v1/leases/5?keys=yes", "", 400, `keys="yes" must be true or false`},
		{"keys twice", "GET", "/v1/leases/5?keys=true&keys=true", "", 400, `parameter "keys" is given 2 times`},
		{"unknown parameter on get", "GET", "/v1/leases/5?key=true", "", 400, `unknown parameter "key" (this endpoint takes keys)`},
		{"unknown parameter on list", "GET", "/v1/leases?keys=true", "", 400, `unknown parameter "keys" (this endpoint takes none)`},
		{"unknown parameter on grant", "POST", "/v1/leases?ttl=10", `{"ttl":10}`, 400, `unknown parameter "ttl" (this endpoint takes none)`},
		{"unknown parameter on keep-alive", "POST", "/v1/leases/5/keepalive?once=true", "", 400, `unknown parameter "once"`},
		{"unknown parameter on revoke", "DELETE", "/v1/leases/5?keys=true", "", 400, `unknown parameter "keys"`},
		// Grant bodies.
		{"no body", "POST", "/v1/leases", "", 400, `the body must be {"ttl": SECONDS}, with an optional "id"`},
		{"no ttl", "POST", "/v1/leases", `{"id":5}`, 400, `"ttl" (seconds) is required`},
		{"ttl null", "POST", "/v1/leases", `{"ttl":null}`, 400, `"ttl" (seconds) is required`},
		{"ttl negative", "POST", "/v1/leases", `{"ttl":-1}`, 400, `"ttl" -1 must not be negative`},
		{"ttl a string", "POST", "/v1/leases", `{"ttl":"10"}`, 400, "cannot unmarshal string"},
		{"ttl a fraction", "POST", "/v1/leases", `{"ttl":1.5}`, 400, "cannot unmarshal number 1.5"},
		{"ttl past int64", "POST", "/v1/leases", `{"ttl":` + big + `}`, 400, "cannot unmarshal number " + big},
		{"id negative", "POST", "/v1/leases", `{"ttl":10,"id":-3}`, 400, `"id" -3 must be positive, or 0 to let the server pick one`},
		{"id a string", "POST", "/v1/leases", `{"ttl":10,"id":"694d77aa9e38260f"}`, 400, "cannot unmarshal string"},
		{"unknown field", "POST", "/v1/leases", `{"ttl":10,"keys":true}`, 400, `unknown field "keys"`},
		{"not an object", "POST", "/v1/leases", `10`, 400, "cannot unmarshal number"},
		{"two objects", "POST", "/v1/leases", `{"ttl":10}{"ttl":20}`, 400, "data after the JSON object"},
		{"malformed", "POST", "/v1/leases", `{"ttl":10`, 400, "unexpected EOF"},
		{"body too large", "POST", "/v1/leases", `{"ttl":10,"id":` + strings.Repeat("0", maxLeaseBody) + `1}`, 413, "request body too large"},
		// Paths and methods that are not endpoints.
		{"trailing slash", "GET", "/v1/leases/", "", 404, "no such endpoint"},
		{"keep-alive by GET", "GET", "/v1/leases/5/keepalive", "", 405, "GET is not allowed"},
		{"grant by PUT", "PUT", "/v1/leases", `{"ttl":10}`, 405, "PUT is not allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := do(t, s, tc.method, tc.target, tc.body)
			if a.status != tc.status || !strings.Contains(a.err.Error, tc.want) {
				t.Errorf("%s %s %s: %d %s, want %d saying %q", tc.method, tc.target, tc.body, a.status, a.body, tc.status, tc.want)
			}
		})
	}
}

// TestLeaseGoodInput: what the API documents is accepted. The database is
// down, so a request that got past its input is a 503.
func TestLeaseGoodInput(t *testing.T) {
	t.Parallel()
	s, _ := newOfflineServer(t)
	for _, rq := range []struct{ method, target, body string }{
		{"PUT", "/v1/kv/a?lease=0", "v"}, // no lease: a plain put
		{"PUT", "/v1/kv/a?lease=7587852521871779343", "v"},
		{"PUT", "/v1/kv/a?lease=0x694d77aa9e38260f", "v"},
		{"PUT", "/v1/kv/a?lease=0X694D77AA9E38260F&prefix=false", "v"},
		{"POST", "/v1/leases", `{"ttl":10}`},
		{"POST", "/v1/leases", `{"ttl":0}`}, // raised to the minimum
		{"POST", "/v1/leases", `{"ttl":10,"id":7587852521871779343}`},
		{"POST", "/v1/leases", ` {"id":0, "ttl":60} ` + "\n"},
		{"GET", "/v1/leases", ""},
		{"GET", "/v1/leases/5", ""},
		{"GET", "/v1/leases/0x7fffffffffffffff?keys=true", ""},
		{"GET", "/v1/leases/5?keys=false", ""},
		{"POST", "/v1/leases/5/keepalive", ""},
		{"POST", "/v1/leases/0x5/keepalive", ""},
		{"DELETE", "/v1/leases/9223372036854775807", ""},
	} {
		if a := do(t, s, rq.method, rq.target, rq.body); a.status != http.StatusServiceUnavailable {
			t.Errorf("%s %s %s: %d %s, want its input accepted (503: the database is down)", rq.method, rq.target, rq.body, a.status, a.body)
		}
	}
}

// TestLeaseAuth: reading leases takes a read-only token, granting, keeping
// alive, revoking and putting with a lease a read-write one.
func TestLeaseAuth(t *testing.T) {
	t.Parallel()
	offline, _ := newOfflineServer(t)
	const ro, rw = "read-only-token-0123456789", "read-write-token-9876543210"
	tokens, err := ParseTokens(strings.NewReader(ro + " ro\n" + rw + " rw\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Client: offline.cfg.Client, Tokens: tokens})
	requests := []struct {
		method, target, body string
		write                bool
	}{
		{"GET", "/v1/leases", "", false},
		{"GET", "/v1/leases/5?keys=true", "", false},
		{"POST", "/v1/leases", `{"ttl":10}`, true},
		{"POST", "/v1/leases/5/keepalive", "", true},
		{"DELETE", "/v1/leases/5", "", true},
		{"PUT", "/v1/kv/a?lease=5", "v", true},
	}
	for _, rq := range requests {
		for _, tc := range []struct {
			token  string
			status int
		}{
			{"", http.StatusUnauthorized},
			{"not-a-known-token-at-all", http.StatusUnauthorized},
			{ro, map[bool]int{false: http.StatusServiceUnavailable, true: http.StatusForbidden}[rq.write]},
			{rw, http.StatusServiceUnavailable}, // let through, to a database that is down
		} {
			var header []string
			if tc.token != "" {
				header = []string{"Authorization", "Bearer " + tc.token}
			}
			if a := do(t, s, rq.method, rq.target, rq.body, header...); a.status != tc.status {
				t.Errorf("%s %s with token %q: %d %s, want %d", rq.method, rq.target, tc.token, a.status, a.body, tc.status)
			}
		}
	}
}

func TestParseLeaseID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
		err  error
	}{
		{"0", 0, nil},
		{"5", 5, nil},
		{"7587852521871779343", 7587852521871779343, nil},
		{"9223372036854775807", 1<<63 - 1, nil},
		{"0x694d77aa9e38260f", 7587852521871779343, nil},
		{"0X694D77AA9E38260F", 7587852521871779343, nil},
		{"0x5", 5, nil},
		{"0x0000000000000005", 5, nil},
		{"0x7fffffffffffffff", 1<<63 - 1, nil},
		{"9223372036854775808", 0, errOutOfRange},
		{"0x8000000000000000", 0, errOutOfRange},
		{"0xffffffffffffffff", 0, errOutOfRange},
		{"", 0, errLeaseID},
		{"0x", 0, errLeaseID},
		{"694d77aa9e38260f", 0, errLeaseID}, // hex needs its 0x here: "10" would be ambiguous
		{"0x00000000000000005", 0, errLeaseID},
		{"0x+5", 0, errLeaseID},
		{"0x-5", 0, errLeaseID},
		{"0xg", 0, errLeaseID},
		{"0x 5", 0, errLeaseID},
		{"-5", 0, errLeaseID},
		{"+5", 0, errLeaseID},
		{"5 ", 0, errLeaseID},
		{"1_000", 0, errLeaseID},
		{"0o17", 0, errLeaseID},
		{"0b101", 0, errLeaseID},
	} {
		got, err := parseLeaseID(tc.in)
		if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("parseLeaseID(%q) = %d, %v; want %d, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// TestLeaseJSON: the shapes of lease answers. The ID comes twice, as a
// number and as etcdctl's hex; keys as package wire puts them.
func TestLeaseJSON(t *testing.T) {
	t.Parallel()
	l := store.Lease{ID: 7587852521871779343, TTL: 60, Remaining: 42, Keys: [][]byte{[]byte("/a"), {0xff, 0x00}}}
	cases := []struct {
		name             string
		timeToLive, keys bool
		lease            store.Lease
		want             string
	}{
		{"grant", false, false, l, `{"id":7587852521871779343,"id_hex":"694d77aa9e38260f","ttl":60}`},
		{"time to live", true, false, l, `{"id":7587852521871779343,"id_hex":"694d77aa9e38260f","ttl":60,"remaining":42}`},
		{"time to live with keys", true, true, l,
			`{"id":7587852521871779343,"id_hex":"694d77aa9e38260f","ttl":60,"remaining":42,"keys":[{"key":"/a"},{"key":"","key_base64":"/wA="}]}`},
		{"with keys, none", true, true, store.Lease{ID: 5, TTL: 10}, `{"id":5,"id_hex":"0000000000000005","ttl":10,"remaining":0,"keys":[]}`},
		{"keep-alive of an expired lease", false, false, store.Lease{ID: 5}, `{"id":5,"id_hex":"0000000000000005","ttl":0}`},
	}
	for _, tc := range cases {
		b, err := json.Marshal(NewLease(tc.lease, tc.timeToLive, tc.keys))
		if err != nil || string(b) != tc.want {
			t.Errorf("%s: %s, %v; want %s", tc.name, b, err, tc.want)
		}
	}
	if err := leaseNotFound(7587852521871779343); !errors.Is(err, store.ErrLeaseNotFound) ||
		err.Error() != "requested lease not found: 7587852521871779343 (0x694d77aa9e38260f)" {
		t.Errorf("leaseNotFound: %v", err)
	}
}
