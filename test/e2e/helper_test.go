// Package e2e_test runs the walwatch binary end to end: it builds
// cmd/walwatch once, then starts `walwatch cp` and `walwatch dp` as
// subprocesses against the private PostgreSQL of test/pgcluster, with
// upstreams served by the test itself.
package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	testbinary "github.com/walwatch/walwatch/test/binary"
	"github.com/walwatch/walwatch/test/logs"
	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
	"github.com/walwatch/walwatch/wire"
)

// binary is the walwatch binary TestMain built.
var binary string

func TestMain(m *testing.M) {
	os.Exit(testbinary.Main("e2e", &binary, func() int { return pgtest.Main(m) }))
}

// Timeouts. None of them is a timing assertion: each bounds a wait for a
// condition that should hold long before.
const (
	waitTimeout = wait.Timeout     // a stream message, a log line
	stopTimeout = 8 * time.Second  // a SIGTERM'd process exits within this
	httpTimeout = 15 * time.Second // one plain HTTP request
)

// slotSeq makes slot names unique in the test binary; the pid makes them
// unique across test binaries sharing a cluster.
var slotSeq atomic.Int64

// slotName is a fresh replication slot name for t.
func slotName(t testing.TB, what string) string {
	return fmt.Sprintf("e2e_%s_%d_%d", what, os.Getpid(), slotSeq.Add(1))
}

// newDatabase creates a database for t and migrates it with the binary.
// Once the harness has dropped it, no replication slot of it may remain.
func newDatabase(t testing.TB) string {
	t.Helper()
	var url string
	t.Cleanup(func() { // registered first: runs after the database is dropped
		if url != "" {
			checkNoSlots(t, url)
		}
	})
	url = pgtest.NewDatabase(t)
	runCLI(t, url, "migrate")
	return url
}

// checkNoSlots fails t if a replication slot of url's database is left.
func checkNoSlots(t testing.TB, url string) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Errorf("parse %s: %v", url, err)
		return
	}
	db := cfg.Database
	cfg.Database = "postgres"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Errorf("connect to check slots: %v", err)
		return
	}
	defer conn.Close(context.Background())
	var left []string
	if err := conn.QueryRow(ctx, `select coalesce(array_agg(slot_name::text), '{}') from pg_replication_slots where database = $1`, db).Scan(&left); err != nil {
		t.Errorf("list slots: %v", err)
		return
	}
	if len(left) > 0 {
		t.Errorf("replication slots left behind by database %s: %v", db, left)
	}
}

// runCLI runs `walwatch --postgres url args...` and returns its stdout.
func runCLI(t testing.TB, url string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"--postgres", url}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("walwatch %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// execSQL runs one statement on url and returns the first column of its
// first row, as text.
func execSQL(t testing.TB, url, sql string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	var out *string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&out); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if out == nil {
		return ""
	}
	return *out
}

// ---- processes ----

// proc is a running walwatch process.
type proc struct {
	name string
	args []string
	cmd  *exec.Cmd
	out  *logs.Buffer // stdout and stderr
	done chan struct{}
	err  error // Wait's error, once done is closed
}

// startProc starts `walwatch args...`. The test's cleanup stops it with
// SIGTERM and checks that it exits 0, unless the test already ended it.
func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, args: args, out: &logs.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if !p.exited() {
			p.stop(t)
		}
		if t.Failed() {
			t.Logf("---- %s (walwatch %s) output ----\n%s", p.name, strings.Join(p.args, " "), tail(p.out.String(), 12000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// log returns what the process has written so far.
func (p *proc) log() string { return p.out.String() }

// count counts the log lines containing s.
func (p *proc) count(s string) int { return p.out.Count(s) }

// waitLog waits until the log has n lines containing s.
func (p *proc) waitLog(t testing.TB, s string, n int) {
	t.Helper()
	wait.For(t, fmt.Sprintf("%s to log %q %d time(s)", p.name, s, n), func() bool { return p.count(s) >= n })
}

// stop sends SIGTERM and checks for a clean exit (status 0) within
// stopTimeout.
func (p *proc) stop(t testing.TB) {
	t.Helper()
	p.terminate(t)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Errorf("%s did not exit within %v of SIGTERM; killing it", p.name, stopTimeout)
		_ = p.cmd.Process.Kill()
		<-p.done
		return
	}
	if p.err != nil {
		t.Errorf("%s exited with %v after SIGTERM, want status 0", p.name, p.err)
	}
	if strings.Contains(p.log(), "graceful shutdown incomplete") {
		t.Errorf("%s: graceful shutdown incomplete (a stream or request kept it waiting)", p.name)
	}
}

// terminate sends SIGTERM.
func (p *proc) terminate(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("SIGTERM %s: %v", p.name, err)
	}
}

// kill sends SIGKILL and waits for the process to end.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Kill()
	<-p.done
}

// waitListening waits for the process to log marker, or to exit. It
// reports whether it failed to bind its address (so the caller may retry on
// another port); any other exit fails the test.
func (p *proc) waitListening(t testing.TB, marker string) (bindFailed bool) {
	t.Helper()
	deadline := time.After(waitTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(p.log(), marker) {
			return false
		}
		select {
		case <-p.done:
			if strings.Contains(p.log(), "address already in use") {
				return true
			}
			t.Fatalf("%s exited before listening: %v\n%s", p.name, p.err, p.log())
		case <-deadline:
			t.Fatalf("%s did not log %q within %v\n%s", p.name, marker, waitTimeout, p.log())
		case <-tick.C:
		}
	}
}

// cp is a running control plane.
type cp struct {
	*proc
	url  string // http://addr
	addr string
	pg   string
	slot string
	args []string
}

// startCP starts `walwatch cp` on a free port with slot (on a migrated
// database) and waits until /readyz answers 200.
func startCP(t testing.TB, pg, slot string, extra ...string) *cp {
	t.Helper()
	for attempt := 0; ; attempt++ {
		c := &cp{addr: pgtest.FreeAddr(t), pg: pg, slot: slot, args: extra}
		if c.launch(t) {
			return c
		}
		if attempt == 5 {
			t.Fatalf("cp: no free port after %d attempts", attempt+1)
		}
	}
}

// restart starts the control plane again on the same address and slot
// (the data planes know it by its URL), once the last process has ended.
func (c *cp) restart(t testing.TB) {
	t.Helper()
	if !c.exited() {
		t.Fatal("cp.restart: the control plane is still running")
	}
	wait.For(t, "cp to start again on "+c.addr, func() bool { return c.launch(t) })
}

// launch starts the process on c.addr; false means the address was taken.
func (c *cp) launch(t testing.TB) bool {
	t.Helper()
	c.url = "http://" + c.addr
	// etcd's API is off unless a test serves it (c.args, later, wins): many
	// cps run side by side, and 2379 is one port.
	args := append([]string{"--postgres", c.pg, "cp", "--listen", c.addr, "--slot", c.slot, "--etcd-listen", ""}, c.args...)
	c.proc = startProc(t, "cp", args...)
	if c.waitListening(t, "control plane listening") {
		return false
	}
	wait.For(t, "cp /readyz to answer 200", func() bool {
		return get(t, c.url+"/readyz", "").status == http.StatusOK
	})
	return true
}

// dp is a running data plane.
type dp struct {
	*proc
	url   string // the proxy
	admin string // the admin listener
}

// startDP starts `walwatch dp` watching the control plane at cpURL and,
// if waitReady, waits until its routes are loaded (/readyz 200).
func startDP(t testing.TB, cpURL string, waitReady bool, extra ...string) *dp {
	t.Helper()
	for attempt := 0; ; attempt++ {
		listen, admin := pgtest.FreeAddr(t), pgtest.FreeAddr(t)
		args := append([]string{"dp", "--cp", cpURL, "--listen", listen, "--admin-listen", admin}, extra...)
		p := startProc(t, "dp", args...)
		if p.waitListening(t, "data plane listening") {
			if attempt == 5 {
				t.Fatalf("dp: no free ports after %d attempts", attempt+1)
			}
			continue
		}
		d := &dp{proc: p, url: "http://" + listen, admin: "http://" + admin}
		if waitReady {
			wait.For(t, "dp /readyz to answer 200", func() bool {
				return get(t, d.admin+"/readyz", "").status == http.StatusOK
			})
		}
		return d
	}
}

// ---- HTTP ----

var httpClient = &http.Client{Timeout: httpTimeout}

type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body into a fresh map.
func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response %d is not a JSON object: %v: %q", r.status, err, r.body)
	}
	return m
}

func (r response) String() string {
	return fmt.Sprintf("%d %s", r.status, strings.TrimSpace(string(r.body)))
}

// call does one request; body is nil, a string, []byte, or a value sent as
// JSON. Headers come in name, value pairs; a token becomes a bearer header.
func call(t testing.TB, method, url, token string, body any, header ...string) response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return response{status: -1, body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{status: -1, body: []byte(err.Error())}
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func get(t testing.TB, url, token string) response { return call(t, http.MethodGet, url, token, nil) }

// mustStatus fails the test unless r has status want.
func mustStatus(t testing.TB, what string, r response, want int) response {
	t.Helper()
	if r.status != want {
		t.Fatalf("%s: got %s, want status %d", what, r, want)
	}
	return r
}

// route is a route's JSON.
type route struct {
	URI      string `json:"uri"`
	Upstream string `json:"upstream"`
}

// putRoute sets a route through the control plane and returns its revision.
func putRoute(t testing.TB, c *cp, name, uri, upstream string) int64 {
	t.Helper()
	r := mustStatus(t, "PUT /routes/"+name, call(t, http.MethodPut, c.url+"/routes/"+name, "", route{uri, upstream}), http.StatusOK)
	return revisionOf(t, r)
}

func deleteRoute(t testing.TB, c *cp, name string) int64 {
	t.Helper()
	r := mustStatus(t, "DELETE /routes/"+name, call(t, http.MethodDelete, c.url+"/routes/"+name, "", nil), http.StatusOK)
	return revisionOf(t, r)
}

// revisionOf reads {"revision": N}.
func revisionOf(t testing.TB, r response) int64 {
	t.Helper()
	var v struct {
		Revision *int64 `json:"revision"`
	}
	if err := json.Unmarshal(r.body, &v); err != nil || v.Revision == nil || *v.Revision <= 0 {
		t.Fatalf("want {\"revision\": N}, got %s (%v)", r, err)
	}
	return *v.Revision
}

// status is GET /v1/status.
type status struct {
	Revision        int64 `json:"revision"`
	CurrentRevision int64 `json:"current_revision"`
	CompactRevision int64 `json:"compact_revision"`
	Slot            *struct {
		Name   string `json:"name"`
		Active bool   `json:"active"`
	} `json:"slot"`
}

func getStatus(t testing.TB, c *cp, token string) status {
	t.Helper()
	r := mustStatus(t, "GET /v1/status", get(t, c.url+"/v1/status", token), http.StatusOK)
	var s status
	if err := json.Unmarshal(r.body, &s); err != nil {
		t.Fatalf("GET /v1/status: %v: %s", err, r.body)
	}
	return s
}

// ---- upstreams ----

// echo is what an upstream answers: who it is and what it got.
type echo struct {
	Upstream string `json:"upstream"`
	Method   string `json:"method"`
	Path     string `json:"path"`
	Query    string `json:"query"`
	Header   string `json:"header"` // X-Walwatch-Test
	Body     string `json:"body"`
}

// newUpstream starts an upstream called name that echoes each request. It
// answers with the status in X-Want-Status, if any, and says who it is in
// the X-Upstream header as well as the body.
func newUpstream(t testing.TB, name string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", name)
		code := http.StatusOK
		if s := r.Header.Get("X-Want-Status"); s != "" {
			code, _ = strconv.Atoi(s)
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(echo{Upstream: name, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
			Header: r.Header.Get("X-Walwatch-Test"), Body: string(b)})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// proxied asks the data plane for path and returns the status and, when an
// upstream answered, what it echoed.
func proxied(t testing.TB, d *dp, path string) (int, echo) {
	t.Helper()
	r := get(t, d.url+path, "")
	var e echo
	if r.header.Get("X-Upstream") != "" {
		if err := json.Unmarshal(r.body, &e); err != nil {
			t.Fatalf("dp %s: upstream answer %q: %v", path, r.body, err)
		}
	}
	return r.status, e
}

// waitRoute waits until the data plane sends path to upstream name.
func waitRoute(t testing.TB, d *dp, path, name string) {
	t.Helper()
	wait.For(t, fmt.Sprintf("dp to send %s to %s", path, name), func() bool {
		code, e := proxied(t, d, path)
		return code == http.StatusOK && e.Upstream == name
	})
}

// waitNoRoute waits until the data plane answers 404 "no route" for path.
func waitNoRoute(t testing.TB, d *dp, path string) {
	t.Helper()
	wait.For(t, fmt.Sprintf("dp to answer 404 no route for %s", path), func() bool {
		r := get(t, d.url+path, "")
		return r.status == http.StatusNotFound && strings.TrimSpace(string(r.body)) == "no route"
	})
}

// ---- Server-Sent Events ----

// stream is an open watch.
type stream struct {
	resp   *http.Response
	cancel context.CancelFunc
	msgs   chan wire.Message
	err    error // set before msgs is closed
}

// openWatch opens GET url as an event stream with the given headers
// (name, value pairs) and fails unless it is a 200 event stream.
func openWatch(t testing.TB, url string, header ...string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: %s %s %s, want a 200 event stream", url, resp.Status, resp.Header.Get("Content-Type"), b)
	}
	s := &stream{resp: resp, cancel: cancel, msgs: make(chan wire.Message)}
	go func() {
		defer close(s.msgs)
		r := wire.NewReader(resp.Body)
		for {
			m, err := r.Next()
			if err != nil {
				s.err = err
				return
			}
			select {
			case s.msgs <- m:
			case <-ctx.Done():
				s.err = ctx.Err()
				return
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

// next returns the next message, skipping progress comments.
func (s *stream) next(t testing.TB) wire.Message {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				t.Fatalf("watch stream ended: %v", s.err)
			}
			if m.Comment != "" && m.ID == "" && m.Event == "" {
				continue
			}
			return m
		case <-timeout:
			t.Fatalf("no watch message within %v", waitTimeout)
		}
	}
}

// ended waits for the stream to end and returns the messages (not
// comments) it still carried.
func (s *stream) ended(t testing.TB) []wire.Message {
	t.Helper()
	var rest []wire.Message
	timeout := time.After(waitTimeout)
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				if !errors.Is(s.err, io.EOF) {
					t.Errorf("watch stream ended with %v, want a clean end (EOF)", s.err)
				}
				return rest
			}
			if m.Comment == "" || m.ID != "" || m.Event != "" {
				rest = append(rest, m)
			}
		case <-timeout:
			t.Fatalf("watch stream did not end within %v", waitTimeout)
		}
	}
}

func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
	for range s.msgs {
	}
}

// events decodes a put, delete or txn message, checking that its id, event
// name and data agree.
func events(t testing.TB, m wire.Message) []wire.Event {
	t.Helper()
	evs, err := m.Events()
	if err != nil {
		t.Fatalf("message id=%q event=%q data=%s: %v", m.ID, m.Event, m.Data, err)
	}
	switch m.Event {
	case "txn":
		if len(evs) < 2 {
			t.Errorf("txn message %s carries %d events, want several", m.ID, len(evs))
		}
	case "put", "delete":
		if strings.ToLower(evs[0].Type) != m.Event {
			t.Errorf("message %s: event %q but type %q", m.ID, m.Event, evs[0].Type)
		}
	default:
		t.Fatalf("message id=%q event=%q data=%s: want put, delete or txn", m.ID, m.Event, m.Data)
	}
	for _, ev := range evs {
		if strconv.FormatInt(ev.Revision, 10) != m.ID {
			t.Errorf("message id %q carries an event at revision %d", m.ID, ev.Revision)
		}
	}
	return evs
}

// ---- metrics ----

// metricValue reads an unlabelled sample from a Prometheus text page.
func metricValue(t testing.TB, page, name string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("metric %s not found", name)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("metric %s: %v", name, err)
	}
	return v
}

// ---- figures ----

// percentile returns the q-quantile (nearest rank) of xs.
func percentile[T int64 | float64 | time.Duration](xs []T, q float64) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// watchDelays reads the watch_delay_ms of the data plane's "add route" and
// "del route" lines for route name.
func watchDelays(log, name string) []float64 {
	re := regexp.MustCompile(`msg="(?:add|del) route".* name=` + regexp.QuoteMeta(name) + ` .*watch_delay_ms=([0-9.]+)`)
	var out []float64
	for _, m := range re.FindAllStringSubmatch(log, -1) {
		if v, err := strconv.ParseFloat(m[1], 64); err == nil {
			out = append(out, v)
		}
	}
	return out
}
