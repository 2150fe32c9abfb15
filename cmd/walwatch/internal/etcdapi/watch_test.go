package etcdapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/wait"
)

// wput writes through walwatch's own client and returns the revision.
func wput(t *testing.T, e *env, key, value string) int64 {
	t.Helper()
	res, err := e.client.Put(callCtx(t), []byte(key), []byte(value))
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return res.Revision
}

func wdel(t *testing.T, e *env, key string) int64 {
	t.Helper()
	res, err := e.client.Delete(callCtx(t), store.Key([]byte(key)))
	if err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
	return res.Revision
}

// settled waits until the hub has released rev, so that a progress
// response or a watch from now is past it.
func settled(t *testing.T, e *env, rev int64) {
	t.Helper()
	wait.For(t, fmt.Sprintf("the hub to reach revision %d", rev), func() bool { return e.client.Hub().Watermark() >= rev })
}

// fmtEvent is an event as these tests compare them.
func fmtEvent(ev *mvccpb.Event) string {
	kv := ev.Kv
	s := fmt.Sprintf("%s %s=%s c%d m%d v%d", ev.Type, kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version)
	if p := ev.PrevKv; p != nil {
		s += fmt.Sprintf(" prev(%s=%s m%d v%d)", p.Key, p.Value, p.ModRevision, p.Version)
	}
	return s
}

// next receives one response from ch, failing the test if none comes.
func next(t *testing.T, ch clientv3.WatchChan) clientv3.WatchResponse {
	t.Helper()
	select {
	case resp, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return resp
	case <-time.After(wait.Timeout):
		t.Fatalf("no watch response within %v", wait.Timeout)
	}
	panic("unreachable")
}

// untilProgress asks for progress on ctx's stream and returns the events ch
// receives before the progress response, and that response's revision.
func untilProgress(t *testing.T, e *env, ctx context.Context, ch clientv3.WatchChan) ([]string, int64) {
	t.Helper()
	if err := e.etcd.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		resp := next(t, ch)
		if err := resp.Err(); err != nil {
			t.Fatalf("watch failed: %v", err)
		}
		if resp.IsProgressNotify() {
			return got, resp.Header.Revision
		}
		for _, ev := range resp.Events {
			got = append(got, fmtEvent(ev))
		}
	}
}

// gauge returns the value of one of the server's gauges.
func gauge(t *testing.T, e *env, name string) float64 {
	t.Helper()
	mfs, err := e.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestWatchEvents(t *testing.T) {
	e := newEnv(t)
	// An empty store is at 1: the history's revisions are 2..9.
	for _, w := range []struct{ op, key, value string }{
		{"put", "a", "1"}, {"put", "b", "1"}, {"put", "a", "2"}, {"del", "a", ""},
		{"put", "a", "3"}, {"put", "ab", "1"}, {"put", "c", "1"}, {"del", "b", ""},
	} {
		if w.op == "put" {
			wput(t, e, w.key, w.value)
		} else {
			wdel(t, e, w.key)
		}
	}
	settled(t, e, 9)
	tests := []struct {
		name string
		key  string
		opts []clientv3.OpOption
		want []string
	}{
		{"single key", "a", []clientv3.OpOption{clientv3.WithRev(2)}, []string{
			"PUT a=1 c2 m2 v1", "PUT a=2 c2 m4 v2", "DELETE a= c0 m5 v0", "PUT a=3 c6 m6 v1"}},
		{"start revision is inclusive", "a", []clientv3.OpOption{clientv3.WithRev(4)}, []string{
			"PUT a=2 c2 m4 v2", "DELETE a= c0 m5 v0", "PUT a=3 c6 m6 v1"}},
		{"prefix", "a", []clientv3.OpOption{clientv3.WithRev(2), clientv3.WithPrefix()}, []string{
			"PUT a=1 c2 m2 v1", "PUT a=2 c2 m4 v2", "DELETE a= c0 m5 v0", "PUT a=3 c6 m6 v1", "PUT ab=1 c7 m7 v1"}},
		{"range", "ab", []clientv3.OpOption{clientv3.WithRev(2), clientv3.WithRange("c")}, []string{
			"PUT b=1 c3 m3 v1", "PUT ab=1 c7 m7 v1", "DELETE b= c0 m9 v0"}},
		{"from key", "b", []clientv3.OpOption{clientv3.WithRev(2), clientv3.WithFromKey()}, []string{
			"PUT b=1 c3 m3 v1", "PUT c=1 c8 m8 v1", "DELETE b= c0 m9 v0"}},
		// etcd attaches no previous value to a creation, even after a delete.
		{"prev_kv", "a", []clientv3.OpOption{clientv3.WithRev(2), clientv3.WithPrevKV()}, []string{
			"PUT a=1 c2 m2 v1", "PUT a=2 c2 m4 v2 prev(a=1 m2 v1)", "DELETE a= c0 m5 v0 prev(a=2 m4 v2)", "PUT a=3 c6 m6 v1"}},
		{"NOPUT", "\x00", []clientv3.OpOption{clientv3.WithRev(2), clientv3.WithFromKey(), clientv3.WithFilterPut()}, []string{
			"DELETE a= c0 m5 v0", "DELETE b= c0 m9 v0"}},
		{"NODELETE", "a", []clientv3.OpOption{clientv3.WithRev(2), clientv3.WithFilterDelete()}, []string{
			"PUT a=1 c2 m2 v1", "PUT a=2 c2 m4 v2", "PUT a=3 c6 m6 v1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(callCtx(t))
			defer cancel()
			got, rev := untilProgress(t, e, ctx, e.etcd.Watch(ctx, tt.key, tt.opts...))
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if rev < 9 {
				t.Errorf("progress at %d, below the last write 9", rev)
			}
		})
	}
}

// A watch from now sees the writes after its created response, whose
// revision is where a clientv3 watcher resumes.
func TestWatchFromNow(t *testing.T) {
	e := newEnv(t)
	before := wput(t, e, "k", "old")
	settled(t, e, before)
	ctx := callCtx(t)
	ch := e.etcd.Watch(ctx, "k", clientv3.WithCreatedNotify())
	created := next(t, ch)
	if !created.Created || created.Header.Revision != before {
		t.Fatalf("created response %+v, want created at %d", created, before)
	}
	rev := wput(t, e, "k", "new")
	resp := next(t, ch)
	if len(resp.Events) != 1 || fmtEvent(resp.Events[0]) != fmt.Sprintf("PUT k=new c%d m%d v2", before, rev) {
		t.Fatalf("got %v, want the put at %d alone", resp.Events, rev)
	}
	if resp.Header.Revision != rev {
		t.Errorf("header revision %d, want the events' %d", resp.Header.Revision, rev)
	}
}

// rawWatch is a Watch stream spoken directly, for what clientv3 hides.
type rawWatch struct {
	t    *testing.T
	s    pb.Watch_WatchClient
	resp chan *pb.WatchResponse
	err  error // once resp is closed
}

func openRawWatch(t *testing.T, e *env) *rawWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	s, err := pb.NewWatchClient(e.etcd.ActiveConnection()).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := &rawWatch{t: t, s: s, resp: make(chan *pb.WatchResponse, 1000)}
	go func() {
		defer close(r.resp)
		for {
			resp, err := s.Recv()
			if err != nil {
				r.err = err
				return
			}
			r.resp <- resp
		}
	}()
	return r
}

func (r *rawWatch) send(req *pb.WatchRequest) {
	r.t.Helper()
	if err := r.s.Send(req); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawWatch) create(c *pb.WatchCreateRequest) {
	r.t.Helper()
	r.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: c}})
}

func (r *rawWatch) cancel(id int64) {
	r.t.Helper()
	r.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}})
}

func (r *rawWatch) progress() {
	r.t.Helper()
	r.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
}

func (r *rawWatch) next() *pb.WatchResponse {
	r.t.Helper()
	select {
	case resp, ok := <-r.resp:
		if !ok {
			r.t.Fatalf("watch stream ended: %v", r.err)
		}
		return resp
	case <-time.After(wait.Timeout):
		r.t.Fatalf("no watch response within %v", wait.Timeout)
	}
	panic("unreachable")
}

// brief is a response as these tests compare them: everything but the
// header's IDs and term, and the events' values.
func brief(r *pb.WatchResponse) string {
	var b strings.Builder
	fmt.Fprintf(&b, "id=%d rev=%d", r.WatchId, r.Header.GetRevision())
	for _, f := range []struct {
		set  bool
		name string
	}{{r.Created, "created"}, {r.Canceled, "canceled"}, {r.Fragment, "fragment"}} {
		if f.set {
			b.WriteString(" " + f.name)
		}
	}
	if r.CompactRevision != 0 {
		fmt.Fprintf(&b, " compact=%d", r.CompactRevision)
	}
	if r.CancelReason != "" {
		fmt.Fprintf(&b, " reason=%q", r.CancelReason)
	}
	for _, ev := range r.Events {
		fmt.Fprintf(&b, " %s:%s@%d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision)
	}
	return b.String()
}

// Creates are answered in order, each before any of its events; IDs are
// the server's from 0 up, skipping those taken, or the client's; a taken
// one is refused as etcd refuses it (checked against etcd v3.7.3).
func TestWatchCreatesAndIDs(t *testing.T) {
	e := newEnv(t)
	r2 := wput(t, e, "x", "1")
	r3 := wput(t, e, "x", "2")
	settled(t, e, r3)
	w := openRawWatch(t, e)
	w.create(&pb.WatchCreateRequest{Key: []byte("x"), StartRevision: r2})
	w.create(&pb.WatchCreateRequest{Key: []byte("x"), StartRevision: r2, WatchId: 1})
	w.create(&pb.WatchCreateRequest{Key: []byte("y"), WatchId: 1})
	w.create(&pb.WatchCreateRequest{Key: []byte("y")})
	w.create(&pb.WatchCreateRequest{Key: []byte("y")})
	created := map[int64]bool{}
	events := map[int64]int{}
	var order []string
	for len(order) < 5 || events[0] < 2 || events[1] < 2 {
		resp := w.next()
		if resp.Created {
			order = append(order, brief(resp))
			created[resp.WatchId] = true
			continue
		}
		if !created[resp.WatchId] {
			t.Fatalf("%s before its created response", brief(resp))
		}
		events[resp.WatchId] += len(resp.Events)
	}
	want := []string{
		fmt.Sprintf("id=0 rev=%d created", r3),
		fmt.Sprintf("id=1 rev=%d created", r3),
		fmt.Sprintf(`id=-1 rev=%d created canceled reason="mvcc: duplicate watch ID provided on the WatchStream"`, r3),
		fmt.Sprintf("id=2 rev=%d created", r3),
		fmt.Sprintf("id=3 rev=%d created", r3),
	}
	if strings.Join(order, "\n") != strings.Join(want, "\n") {
		t.Fatalf("created responses:\n%s\nwant:\n%s", strings.Join(order, "\n"), strings.Join(want, "\n"))
	}
	if events[0] != 2 || events[1] != 2 {
		t.Fatalf("events %v, want 2 each for watchers 0 and 1", events)
	}
	if autoWatchID != clientv3.AutoWatchID || invalidWatchID != clientv3.InvalidWatchID {
		t.Fatal("watch IDs differ from clientv3's")
	}
}

// Creates refused before they get an ID, with etcd's reasons.
func TestWatchCreateRefused(t *testing.T) {
	e := newEnv(t)
	w := openRawWatch(t, e)
	tests := []struct {
		name string
		req  *pb.WatchCreateRequest
		want string
	}{
		{"negative start", &pb.WatchCreateRequest{Key: []byte("x"), StartRevision: -5}, rpctypes.ErrCompacted.Error()},
		{"end before key", &pb.WatchCreateRequest{Key: []byte("x"), RangeEnd: []byte("a")}, "mvcc: watcher range is empty"},
		{"end at key", &pb.WatchCreateRequest{Key: []byte("x"), RangeEnd: []byte("x")}, "mvcc: watcher range is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w.t = t
			w.create(tt.req)
			resp := w.next()
			if resp.WatchId != -1 || !resp.Created || !resp.Canceled || resp.CancelReason != tt.want {
				t.Fatalf("got %s, want refused with %q", brief(resp), tt.want)
			}
		})
	}
}

// A cancel is answered with the watcher's ID, and nothing follows it; an
// unknown ID gets no answer, as in etcd.
func TestWatchCancel(t *testing.T) {
	e := newEnv(t)
	w := openRawWatch(t, e)
	w.create(&pb.WatchCreateRequest{Key: []byte("k")})
	if resp := w.next(); !resp.Created || resp.WatchId != 0 {
		t.Fatalf("got %s, want created 0", brief(resp))
	}
	wait.For(t, "the watcher gauge to count it", func() bool { return gauge(t, e, "walwatch_etcd_watchers") == 1 })
	if got := gauge(t, e, "walwatch_etcd_watch_streams"); got != 1 {
		t.Fatalf("streams gauge %v, want 1", got)
	}
	w.cancel(99)
	w.cancel(0)
	resp := w.next()
	if !resp.Canceled || resp.WatchId != 0 || resp.CancelReason != "" || resp.Created {
		t.Fatalf("got %s, want canceled 0 (and nothing for 99)", brief(resp))
	}
	rev := wput(t, e, "k", "v")
	settled(t, e, rev)
	w.progress()
	// No watcher is left: the progress response is the current revision,
	// and no event of the put came before it.
	if resp := w.next(); resp.WatchId != -1 || resp.Header.Revision < rev || len(resp.Events) > 0 || resp.Canceled {
		t.Fatalf("got %s, want progress at %d", brief(resp), rev)
	}
	if got := gauge(t, e, "walwatch_etcd_watchers"); got != 0 {
		t.Fatalf("watchers gauge %v after the cancel, want 0", got)
	}

	// clientv3: canceling a watch's context closes its channel.
	ctx, cancel := context.WithCancel(callCtx(t))
	ch := e.etcd.Watch(ctx, "k")
	wait.For(t, "the clientv3 watcher", func() bool { return gauge(t, e, "walwatch_etcd_watchers") == 1 })
	cancel()
	for range ch {
	}
	wait.For(t, "the clientv3 watcher to be gone", func() bool { return gauge(t, e, "walwatch_etcd_watchers") == 0 })
}

// A start below the compacted revision: created, then canceled with the
// compacted revision (header revision 0, as etcd's); its ID stays taken
// until the client cancels it, as in etcd.
func TestWatchCompactedStart(t *testing.T) {
	e := newEnv(t)
	var rev int64
	for i := range 4 {
		rev = wput(t, e, "c", fmt.Sprint(i)) // 2..5
	}
	if _, err := e.client.Compact(callCtx(t), rev); err != nil {
		t.Fatal(err)
	}
	settled(t, e, rev)

	ctx := callCtx(t)
	resp := next(t, e.etcd.Watch(ctx, "c", clientv3.WithRev(2)))
	if resp.CompactRevision != rev || !resp.Canceled || !errors.Is(resp.Err(), rpctypes.ErrCompacted) {
		t.Fatalf("got %+v (err %v), want compacted at %d", resp, resp.Err(), rev)
	}

	w := openRawWatch(t, e)
	w.create(&pb.WatchCreateRequest{Key: []byte("c"), StartRevision: 2, WatchId: 5})
	if got, want := brief(w.next()), fmt.Sprintf("id=5 rev=%d created", rev); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	if got, want := brief(w.next()), fmt.Sprintf("id=5 rev=0 canceled compact=%d", rev); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	w.create(&pb.WatchCreateRequest{Key: []byte("c"), WatchId: 5})
	if resp := w.next(); resp.WatchId != -1 || !resp.Canceled {
		t.Fatalf("got %s, want 5 refused as taken", brief(resp))
	}
	w.cancel(5)
	if got, want := brief(w.next()), fmt.Sprintf("id=5 rev=%d canceled", rev); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	// At the compacted revision the watch works.
	w.create(&pb.WatchCreateRequest{Key: []byte("c"), StartRevision: rev, WatchId: 5})
	if got, want := brief(w.next()), fmt.Sprintf("id=5 rev=%d created", rev); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	if got, want := brief(w.next()), fmt.Sprintf("id=5 rev=%d PUT:c@%d", rev, rev); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// Several clientv3 watches of one context share one stream; each gets its
// own events.
func TestWatchMultiplexed(t *testing.T) {
	e := newEnv(t)
	ctx := callCtx(t)
	const n = 5
	chans := make([]clientv3.WatchChan, n)
	for i := range chans {
		chans[i] = e.etcd.Watch(ctx, fmt.Sprintf("m/%d", i), clientv3.WithCreatedNotify())
		if resp := next(t, chans[i]); !resp.Created {
			t.Fatalf("watch %d: %+v, want created", i, resp)
		}
	}
	if s, w := gauge(t, e, "walwatch_etcd_watch_streams"), gauge(t, e, "walwatch_etcd_watchers"); s != 1 || w != n {
		t.Fatalf("%v streams, %v watchers; want 1 and %d", s, w, n)
	}
	for i := n - 1; i >= 0; i-- {
		wput(t, e, fmt.Sprintf("m/%d", i), fmt.Sprint(i))
	}
	for i, ch := range chans {
		resp := next(t, ch)
		if len(resp.Events) != 1 || string(resp.Events[0].Kv.Key) != fmt.Sprintf("m/%d", i) {
			t.Fatalf("watch %d got %v", i, resp.Events)
		}
	}
}

// The events of a Txn, one revision, come in one response.
func TestWatchTxnInOneResponse(t *testing.T) {
	e := newEnv(t)
	settled(t, e, wput(t, e, "t/gone", "x")) // before the watch from now
	ctx := callCtx(t)
	ch := e.etcd.Watch(ctx, "t/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	next(t, ch)
	res, err := e.client.Txn(ctx, store.TxnRequest{Then: []store.Op{
		store.OpPutKey([]byte("t/a"), []byte("1")),
		store.OpPutKey([]byte("t/b"), []byte("2")),
		store.OpDeleteRange(store.Key([]byte("t/gone"))),
		store.OpPutKey([]byte("t/c"), []byte("3")),
	}})
	if err != nil {
		t.Fatal(err)
	}
	resp := next(t, ch)
	var got []string
	for _, ev := range resp.Events {
		got = append(got, fmt.Sprintf("%s %s@%d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision))
	}
	r := res.Revision
	want := []string{
		fmt.Sprintf("PUT t/a@%d", r), fmt.Sprintf("PUT t/b@%d", r),
		fmt.Sprintf("DELETE t/gone@%d", r), fmt.Sprintf("PUT t/c@%d", r),
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("one response: %v, want %v", got, want)
	}
}

// A write made in plain SQL reaches an etcd watcher.
func TestWatchSeesSQLWrite(t *testing.T) {
	e := newEnv(t)
	ctx := callCtx(t)
	ch := e.etcd.Watch(ctx, "sql/k", clientv3.WithCreatedNotify())
	next(t, ch)
	var rev int64
	if err := e.client.Store().Pool().QueryRow(ctx, "select walwatch.set('sql/k', 'from psql')").Scan(&rev); err != nil {
		t.Fatal(err)
	}
	resp := next(t, ch)
	if len(resp.Events) != 1 || fmtEvent(resp.Events[0]) != fmt.Sprintf("PUT sql/k=from psql c%d m%d v1", rev, rev) {
		t.Fatalf("got %v, want the SQL write at %d", resp.Events, rev)
	}
}

// An idle watcher that asked for progress_notify gets progress responses
// every ProgressInterval; one that did not ask gets none.
func TestWatchProgressNotify(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ProgressInterval = 50 * time.Millisecond })
	ctx := callCtx(t)
	quiet := e.etcd.Watch(ctx, "quiet", clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	next(t, quiet)
	plain := e.etcd.Watch(ctx, "quiet2", clientv3.WithCreatedNotify())
	next(t, plain)
	rev := wput(t, e, "noise", "x")
	for got := 0; got < 2; {
		resp := next(t, quiet)
		if !resp.IsProgressNotify() {
			t.Fatalf("got %+v, want a progress notification", resp)
		}
		if resp.Header.Revision >= rev {
			got++
		}
	}
	select {
	case resp := <-plain:
		t.Fatalf("a watcher without progress_notify got %+v", resp)
	default:
	}
}

// WatchProgressRequest: answered once every watcher of the stream has been
// sent every event up to the answer's revision, also while one catches up
// (the answer waits), with ID -1, which clientv3 gives every watcher.
func TestWatchRequestProgress(t *testing.T) {
	e := newEnv(t)
	ctx := callCtx(t)
	const n = 300 // more than a hub channel holds: the watcher from 2 catches up
	var last int64
	for i := range n {
		last = wput(t, e, fmt.Sprintf("p/%d", i%10), fmt.Sprint(i))
	}
	settled(t, e, last)
	live := e.etcd.Watch(ctx, "q", clientv3.WithCreatedNotify())
	next(t, live)
	past := e.etcd.Watch(ctx, "p/", clientv3.WithPrefix(), clientv3.WithRev(2))
	got, rev := untilProgress(t, e, ctx, past)
	if len(got) != n || rev < last {
		t.Fatalf("%d events before progress at %d, want %d before progress at %d or later", len(got), rev, n, last)
	}
	resp := next(t, live)
	if !resp.IsProgressNotify() || resp.Header.Revision != rev {
		t.Fatalf("the other watcher of the stream got %+v, want progress at %d", resp, rev)
	}

	// Raw: no watcher, the current revision; a watcher starting at the
	// next revision (Kubernetes' list, then watch) does not hold it back.
	w := openRawWatch(t, e)
	w.progress()
	if got, want := brief(w.next()), fmt.Sprintf("id=-1 rev=%d", last); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	w.create(&pb.WatchCreateRequest{Key: []byte("q"), StartRevision: last + 1})
	w.next()
	w.progress()
	if got, want := brief(w.next()), fmt.Sprintf("id=-1 rev=%d", last); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	// One starting further on holds it back until the revision before its
	// start.
	w.create(&pb.WatchCreateRequest{Key: []byte("q"), StartRevision: last + 3})
	w.next()
	w.progress()
	wput(t, e, "other", "1")
	r := wput(t, e, "other", "2")
	if got, want := brief(w.next()), fmt.Sprintf("id=-1 rev=%d", r); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// With fragment, a response larger than the request limit (with etcd's
// gRPC overhead) comes in fragments, which clientv3 puts together; without
// it, whole.
func TestWatchFragment(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxRequestBytes = 1024 })
	ctx := callCtx(t)
	frag := e.etcd.Watch(ctx, "f/", clientv3.WithPrefix(), clientv3.WithFragment(), clientv3.WithCreatedNotify())
	next(t, frag)
	w := openRawWatch(t, e)
	w.create(&pb.WatchCreateRequest{Key: []byte("f/"), RangeEnd: []byte("f0"), Fragment: true})
	w.next()
	whole := openRawWatch(t, e)
	whole.create(&pb.WatchCreateRequest{Key: []byte("f/"), RangeEnd: []byte("f0")})
	whole.next()

	value := bytes.Repeat([]byte("v"), 200<<10) // 4 of them: over 1 KiB + 512 KiB
	var ops []store.Op
	for i := range 4 {
		ops = append(ops, store.OpPutKey(fmt.Appendf(nil, "f/%d", i), value))
	}
	res, err := e.client.Txn(ctx, store.TxnRequest{Then: ops})
	if err != nil {
		t.Fatal(err)
	}
	resp := next(t, frag)
	if len(resp.Events) != 4 || resp.Events[3].Kv.ModRevision != res.Revision {
		t.Fatalf("clientv3 got %d events, want the 4 of revision %d", len(resp.Events), res.Revision)
	}
	limit := 1024 + grpcOverheadBytes
	var sizes []string
	for events := 0; events < 4; {
		r := w.next()
		events += len(r.Events)
		if r.Fragment != (events < 4) {
			t.Fatalf("fragment with %d of 4 events has fragment=%v", events, r.Fragment)
		}
		if proto.Size(r) >= limit && len(r.Events) > 1 {
			t.Fatalf("fragment of %d bytes, %d events: at least the limit %d", proto.Size(r), len(r.Events), limit)
		}
		sizes = append(sizes, fmt.Sprint(len(r.Events)))
	}
	if got := strings.Join(sizes, "+"); got != "2+2" {
		t.Errorf("fragments of %s events, want 2+2 (etcd's split)", got)
	}
	if r := whole.next(); len(r.Events) != 4 || r.Fragment {
		t.Fatalf("without fragment: %d events, fragment=%v; want 4 whole", len(r.Events), r.Fragment)
	}
}

// When the hub stops, each watcher is canceled with a reason; new ones are
// refused.
func TestWatchHubStopped(t *testing.T) {
	e := newEnv(t)
	w := openRawWatch(t, e)
	w.create(&pb.WatchCreateRequest{Key: []byte("k")})
	w.next()
	if err := e.client.Close(); err != nil {
		t.Fatal(err)
	}
	want := status.Convert(rpctypes.ErrGRPCStopped).Message()
	if resp := w.next(); !resp.Canceled || resp.WatchId != 0 || resp.CancelReason != want {
		t.Fatalf("got %s, want canceled for the stopped hub", brief(resp))
	}
	w.create(&pb.WatchCreateRequest{Key: []byte("k")})
	if resp := w.next(); resp.WatchId != -1 || !resp.Canceled || resp.CancelReason != want {
		t.Fatalf("got %s, want refused", brief(resp))
	}
}

// The server's stop ends watch streams, with etcd's "server stopped", on
// which clientv3 reconnects.
func TestWatchEndsWhenServerStops(t *testing.T) {
	e := newEnv(t)
	w := openRawWatch(t, e)
	w.create(&pb.WatchCreateRequest{Key: []byte("k")})
	w.next()
	e.stop()
	for range w.resp {
	}
	if status.Code(w.err) != codes.Unavailable {
		t.Fatalf("stream ended with %v, want Unavailable", w.err)
	}
	if s, n := gauge(t, e, "walwatch_etcd_watch_streams"), gauge(t, e, "walwatch_etcd_watchers"); s != 0 || n != 0 {
		t.Fatalf("%v streams and %v watchers after the stop", s, n)
	}
}

// After the client closes its sending side (as the JSON gateway does at the
// end of the request body), its watches go on, as in etcd.
func TestWatchAfterCloseSend(t *testing.T) {
	e := newEnv(t)
	w := openRawWatch(t, e)
	w.create(&pb.WatchCreateRequest{Key: []byte("k")})
	w.next()
	if err := w.s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	rev := wput(t, e, "k", "v")
	if got, want := brief(w.next()), fmt.Sprintf("id=0 rev=%d PUT:k@%d", rev, rev); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// fakeStream is a Watch stream's server side that records what is sent.
type fakeStream struct {
	grpc.ServerStream
	sent []*pb.WatchResponse
}

func (f *fakeStream) Send(r *pb.WatchResponse) error  { f.sent = append(f.sent, r); return nil }
func (f *fakeStream) Recv() (*pb.WatchRequest, error) { return nil, io.EOF }
func (f *fakeStream) Context() context.Context        { return context.Background() }
func (f *fakeStream) SetHeader(metadata.MD) error     { return nil }

// What the hub ends a watcher with becomes etcd's cancel: a compaction met
// while catching up as a compacted start is told; anything else with a
// reason.
func TestWatchEndedByHub(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name string
		d    delivery
		want string
	}{
		{"compacted while catching up", delivery{resp: replication.WatchResponse{
			Canceled: true, Err: &store.CompactedError{Revision: 3, CompactRevision: 7}, CompactRevision: 7}},
			"id=4 rev=0 canceled compact=7"},
		{"hub stopped, no room for its word", delivery{end: true, err: replication.ErrHubStopped},
			`id=4 rev=1 canceled reason="etcdserver: server stopped"`},
		{"ended by the stream", delivery{end: true, err: context.Canceled}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeStream{}
			st := &watchStream{s: e.srv, hub: e.client.Hub(), grpc: f, log: e.srv.log, watches: map[int64]*watch{}}
			w := &watch{id: 4}
			st.watches[4] = w
			tt.d.w = w
			if err := st.deliver(tt.d); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range f.sent {
				got = append(got, brief(r))
			}
			if strings.Join(got, "\n") != tt.want {
				t.Fatalf("sent %q, want %q", got, tt.want)
			}
			if !w.ended || st.watches[4] != w {
				t.Fatal("the ended watcher must keep its ID until the client cancels it")
			}
		})
	}
}

// A progress round holds a watcher's responses that come after its mark
// until every member's mark has come: the answer's revision is then above
// none of the events sent before it, and below all those sent after.
func TestWatchProgressHoldsLaterEvents(t *testing.T) {
	e := newEnv(t)
	ctx := callCtx(t)
	f := &fakeStream{}
	st := &watchStream{s: e.srv, hub: e.client.Hub(), grpc: f, log: e.srv.log, watches: map[int64]*watch{},
		retry: time.NewTicker(time.Hour)}
	defer st.retry.Stop()
	for id, key := range []string{"a", "b"} {
		hw, err := e.client.Watch(ctx, replication.WatchRequest{Range: store.Key([]byte(key))})
		if err != nil {
			t.Fatal(err)
		}
		st.watches[int64(id)] = &watch{id: int64(id), hw: hw}
	}
	a, b := st.watches[0], st.watches[1]
	st.progress.wanted = true
	if err := st.tryProgress(); err != nil || !st.progress.inFlight {
		t.Fatalf("round not started (err %v)", err)
	}
	rev := wput(t, e, "a", "after the marks")
	read := func(w *watch) {
		t.Helper()
		select {
		case resp := <-w.hw.C:
			if err := st.deliver(delivery{w: w, resp: resp}); err != nil {
				t.Fatal(err)
			}
		case <-time.After(wait.Timeout):
			t.Fatal("no hub response")
		}
	}
	read(a) // its mark
	read(a) // the put: held
	if len(f.sent) != 0 {
		t.Fatalf("sent %s while b's mark has not come", brief(f.sent[0]))
	}
	read(b) // its mark: the round is answered, then a's put
	var got []string
	for _, r := range f.sent {
		got = append(got, brief(r))
	}
	want := []string{fmt.Sprintf("id=-1 rev=%d", rev-1), fmt.Sprintf("id=0 rev=%d PUT:a@%d", rev, rev)}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("sent:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
