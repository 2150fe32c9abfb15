package etcdapi

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// b64 is how etcd's JSON gateway carries bytes.
func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// gatewayPost posts body (JSON) to the gateway and returns the status and
// the decoded answer.
func gatewayPost(t *testing.T, e *env, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(callCtx(t), http.MethodPost, e.endpoint+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("POST %s: %d %q is not JSON: %v", path, resp.StatusCode, b, err)
	}
	return resp.StatusCode, m
}

// field walks a decoded JSON value by keys and indexes, as text.
func field(v any, path ...any) string {
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[p]
		case int:
			a, _ := v.([]any)
			if p >= len(a) {
				return ""
			}
			v = a[p]
		}
	}
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// The JSON gateway with plain HTTP, as APISIX and curl use it: base64 keys
// and values, int64s as strings, proto field names.
func TestGatewayKV(t *testing.T) {
	e := newEnv(t)
	code, put := gatewayPost(t, e, "/v3/kv/put", fmt.Sprintf(`{"key": %q, "value": %q}`, b64("/gw/a"), b64("hello")))
	if code != http.StatusOK || field(put, "header", "revision") != "2" {
		t.Fatalf("put: %d %v", code, put)
	}
	gatewayPost(t, e, "/v3/kv/put", fmt.Sprintf(`{"key": %q, "value": %q}`, b64("/gw/b"), b64("world")))
	code, rng := gatewayPost(t, e, "/v3/kv/range", fmt.Sprintf(`{"key": %q}`, b64("/gw/a")))
	if code != http.StatusOK || field(rng, "kvs", 0, "value") != b64("hello") || field(rng, "kvs", 0, "mod_revision") != "2" ||
		field(rng, "count") != "1" || field(rng, "header", "revision") != "3" {
		t.Fatalf("range /gw/a: %d %v", code, rng)
	}
	code, rng = gatewayPost(t, e, "/v3/kv/range", fmt.Sprintf(`{"key": %q, "range_end": %q}`, b64("/gw/"), b64("/gw0")))
	if code != http.StatusOK || field(rng, "count") != "2" || field(rng, "kvs", 1, "key") != b64("/gw/b") {
		t.Fatalf("range /gw/ prefix: %d %v", code, rng)
	}
	// etcd's errors, as JSON with the gRPC code.
	code, bad := gatewayPost(t, e, "/v3/kv/put", `{"value": "eA=="}`)
	if code != http.StatusBadRequest || field(bad, "message") != "etcdserver: key is not provided" || field(bad, "code") != "3" {
		t.Errorf("put without a key: %d %v", code, bad)
	}

	code, st := gatewayPost(t, e, "/v3/maintenance/status", `{}`)
	if code != http.StatusOK || field(st, "version") != "3.7.3" || field(st, "header", "revision") != "3" ||
		field(st, "leader") != field(st, "header", "member_id") || field(st, "dbSize") == "" {
		t.Errorf("status: %d %v", code, st)
	}
	code, members := gatewayPost(t, e, "/v3/cluster/member/list", `{}`)
	if code != http.StatusOK || field(members, "members", 0, "clientURLs", 0) != e.endpoint {
		t.Errorf("member list: %d %v", code, members)
	}
}

// etcd's GET /version and /health, beside the gateway.
func TestGatewayVersionAndHealth(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.EmulatedVersion = "3.6.4" })
	for path, want := range map[string]string{
		"/version": `{"etcdserver":"3.6.4","etcdcluster":"3.6.0","storage":"3.6.0"}`,
		"/health":  `{"health":"true","reason":""}`,
	} {
		resp, err := http.Get(e.endpoint + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != want {
			t.Errorf("GET %s: %d %s, want %s", path, resp.StatusCode, b, want)
		}
	}
}

// gatewayWatch posts body to /v3/watch and returns a function that reads
// the next JSON object of the streamed response.
func gatewayWatch(t *testing.T, e *env, body io.Reader) (next func() map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.endpoint+"/v3/watch", body)
	if err != nil {
		t.Fatal(err)
	}
	resps := make(chan *http.Response, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("POST /v3/watch: %v", err)
		}
		resps <- resp
	}()
	msgs := make(chan map[string]any)
	go func() {
		defer close(msgs)
		resp := <-resps
		if resp == nil {
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("POST /v3/watch: %s", resp.Status)
			return
		}
		dec := json.NewDecoder(bufio.NewReader(resp.Body))
		for {
			var m map[string]any
			if err := dec.Decode(&m); err != nil {
				return
			}
			select {
			case msgs <- m:
			case <-t.Context().Done():
				return
			}
		}
	}()
	return func() map[string]any {
		t.Helper()
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatal("watch stream ended")
			}
			return m
		case <-time.After(10 * time.Second):
			t.Fatal("no watch message within 10s")
		}
		return nil
	}
}

// watchEvents reads watch messages until n events have come.
func watchEvents(next func() map[string]any, n int) []any {
	var events []any
	for len(events) < n {
		m := next()
		evs, _ := m["result"].(map[string]any)["events"].([]any)
		events = append(events, evs...)
	}
	return events
}

// A streaming watch through the gateway: the requests go in the request
// body, the responses come back as JSON objects in the chunked response.
func TestGatewayWatch(t *testing.T) {
	e := newEnv(t)
	put := func(key, value string) {
		t.Helper()
		if code, m := gatewayPost(t, e, "/v3/kv/put", fmt.Sprintf(`{"key": %q, "value": %q}`, b64(key), b64(value))); code != http.StatusOK {
			t.Fatalf("put: %d %v", code, m)
		}
	}
	create := fmt.Sprintf(`{"create_request": {"key": %q, "range_end": %q, "prev_kv": true}}`, b64("/gw/"), b64("/gw0"))

	// As curl -d sends it: the whole body at once.
	next := gatewayWatch(t, e, strings.NewReader(create))
	if m := next(); field(m, "result", "created") != "true" {
		t.Fatalf("first message: %v, want created", m)
	}
	put("/gw/x", "1")
	put("/gw/x", "2")
	events := watchEvents(next, 2)
	if field(events[0], "kv", "value") != b64("1") || field(events[0], "kv", "mod_revision") != "2" ||
		field(events[1], "kv", "value") != b64("2") || field(events[1], "prev_kv", "value") != b64("1") {
		t.Errorf("events: %v", events)
	}

	// Interactively: a second watch created on the stream after the first
	// one's events.
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go fmt.Fprint(pw, create) //nolint:errcheck // the test fails on what it reads
	next = gatewayWatch(t, e, pr)
	if m := next(); field(m, "result", "created") != "true" {
		t.Fatalf("first message: %v, want created", m)
	}
	put("/gw/y", "3")
	if events := watchEvents(next, 1); field(events[0], "kv", "key") != b64("/gw/y") {
		t.Errorf("events: %v", events)
	}
	go fmt.Fprintf(pw, `{"create_request": {"key": %q}}`, b64("/other")) //nolint:errcheck
	if m := next(); field(m, "result", "created") != "true" || field(m, "result", "watch_id") != "1" {
		t.Fatalf("second create: %v, want created, watch 1", m)
	}
	put("/other", "4")
	if events := watchEvents(next, 1); field(events[0], "kv", "key") != b64("/other") {
		t.Errorf("events of the second watch: %v", events)
	}
	pw.Close() // the end of the requests; the watches go on until the test ends
}

// etcd's request limit (1.5 MiB): a put over it is refused with etcd's
// "request is too large", one over what gRPC takes at all (2 MiB) by the
// transport, as etcd does, through clientv3 and the gateway alike; neither
// writes anything or hurts the server.
func TestRequestTooLarge(t *testing.T) {
	e := newEnv(t)
	big := strings.Repeat("x", 2<<20)     // over what gRPC takes (2 MiB)
	large := strings.Repeat("x", 1600000) // over 1.5 MiB, under 2 MiB

	_, err := e.etcd.Put(callCtx(t), "/big", big)
	if s, _ := status.FromError(err); s.Code() != codes.ResourceExhausted || !strings.Contains(s.Message(), "larger than max") {
		t.Errorf("clientv3 put of 2 MiB: %v, want ResourceExhausted, message larger than max", err)
	}
	if _, err := e.etcd.Put(callCtx(t), "/large", large); !errors.Is(err, rpctypes.ErrRequestTooLarge) {
		t.Errorf("clientv3 put of 1.6 MB: %v, want %v", err, rpctypes.ErrRequestTooLarge)
	}

	code, m := gatewayPost(t, e, "/v3/kv/put", fmt.Sprintf(`{"key": %q, "value": %q}`, b64("/big"), b64(big)))
	if code != http.StatusTooManyRequests || field(m, "code") != "8" || !strings.Contains(field(m, "message"), "larger than max") {
		t.Errorf("gateway put of 2 MiB: %d %v, want etcd's 429, code 8", code, m)
	}
	code, m = gatewayPost(t, e, "/v3/kv/put", fmt.Sprintf(`{"key": %q, "value": %q}`, b64("/large"), b64(large)))
	if code != http.StatusBadRequest || field(m, "message") != "etcdserver: request is too large" {
		t.Errorf("gateway put of 1.6 MB: %d %v, want 400, request is too large", code, m)
	}
	// A body far over anything the gateway reads is cut short.
	padded := fmt.Sprintf(`{"key": %q, "value": "eA==", "pad": %q}`, b64("/pad"), strings.Repeat(" ", 8<<20))
	code, m = gatewayPost(t, e, "/v3/kv/put", padded)
	if code != http.StatusBadRequest || !strings.Contains(field(m, "message"), "too large") {
		t.Errorf("gateway put with an 8 MiB body: %d %v, want 400, too large", code, m)
	}

	// Nothing was written, and the server still serves.
	resp, err := e.etcd.Get(callCtx(t), "/", clientv3.WithPrefix())
	if err != nil || resp.Count != 0 || resp.Header.Revision != 1 {
		t.Errorf("after the refused puts: %v, %v; want nothing at revision 1", resp, err)
	}
	if _, err := e.etcd.Put(callCtx(t), "/ok", strings.Repeat("x", 1<<20)); err != nil {
		t.Errorf("a 1 MiB put after the refused ones: %v", err)
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, `{"key": %q, "value": %q}`, b64("/ok2"), b64(strings.Repeat("y", 1<<20+1<<19-1024)))
	if code, m := gatewayPost(t, e, "/v3/kv/put", buf.String()); code != http.StatusOK {
		t.Errorf("a gateway put just under 1.5 MiB: %d %v", code, m)
	}
}
