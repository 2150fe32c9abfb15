package etcdapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
)

// Tunables of the Watch service.
var (
	// maxWatchersPerStream bounds the watchers of one stream, ended ones
	// that keep their ID until the client cancels them included. etcd has
	// no bound; here an idle watcher costs about 0.7 KiB (one with
	// responses queued, up to Config.WatcherBytes more), so a stream's idle
	// watchers take at most about 7 MiB. Clients multiplex all the watches
	// of one context on one stream: kube-apiserver holds one per resource
	// type, a few hundred.
	maxWatchersPerStream = 10000
	// progressRetryInterval is how often a progress request that waits for
	// a watcher to catch up is tried again (the hub's catch-up loop runs
	// every 10ms).
	progressRetryInterval = 10 * time.Millisecond
)

// IDs with a meaning in etcd's Watch (clientv3's AutoWatchID and
// InvalidWatchID; clientv3 stays out of the server).
const (
	// autoWatchID in a create request asks the server for an ID.
	autoWatchID int64 = 0
	// invalidWatchID is the ID of a refused create, and of a progress
	// response for every watcher of the stream (clientv3 broadcasts a
	// progress response with it to all of them).
	invalidWatchID int64 = -1
)

// etcd's mvcc errors, whose text a refused create carries as its
// cancel_reason. They live in etcd's server module, which stays out of
// ours: the strings are etcd's (storage/mvcc/watcher.go), checked against a
// real etcd.
const (
	reasonEmptyRange  = "mvcc: watcher range is empty"
	reasonDuplicateID = "mvcc: duplicate watch ID provided on the WatchStream"
)

// eventsField is WatchResponse's events field, to size fragments.
var eventsField = (&pb.WatchResponse{}).ProtoReflect().Descriptor().Fields().ByName("events").Number()

// watchServer is etcd's Watch service on the client's hub: every watcher of
// every stream is a watcher of that one hub.
type watchServer struct {
	pb.UnimplementedWatchServer
	s *Server
}

var _ pb.WatchServer = (*watchServer)(nil)

// Watch serves one stream: a goroutine reads requests and prepares
// creates (their hub watch may read the compacted revision from
// PostgreSQL); the handler's goroutine owns the stream's state, is the
// only one that sends, as grpc-go requires, and receives what the hub
// delivers to each watcher when the hub says there is something (no
// goroutine per watcher: thousands on one stream are common). Everything
// ends with the stream's context, which also ends when the server stops
// (Server.endOnStop).
func (ws *watchServer) Watch(stream pb.Watch_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	st := &watchStream{
		s:       ws.s,
		hub:     ws.s.cfg.Client.Hub(),
		grpc:    stream,
		log:     ws.s.log.With("component", "etcd-watch"),
		watches: map[int64]*watch{},
		ready:   make(chan struct{}, 1),
	}
	ws.s.metrics.streams.Inc()
	defer ws.s.metrics.streams.Dec()

	reqs := make(chan *watchOp)
	recvErr := make(chan error, 1)
	// Not waited for: Recv returns only once the handler has returned (or
	// the client has gone), as etcd notes for its own receive loop.
	go st.recvLoop(ctx, reqs, recvErr)
	err := st.sendLoop(ctx, reqs, recvErr)
	cancel() // ends every hub watcher
	for _, w := range st.watches {
		st.remove(w)
	}
	return err
}

// watchStream is one Watch stream's state, owned by its send loop.
type watchStream struct {
	s    *Server
	hub  *replication.Hub
	grpc pb.Watch_WatchServer
	log  *slog.Logger

	watches map[int64]*watch // by ID, ended ones too until the client cancels them
	nextID  int64            // the next ID to try for a create that asks the server for one

	// The watchers the hub has queued something for since the send loop
	// last looked, in order (the hub's Notify, from its goroutines), and a
	// wake-up for the send loop.
	readyMu sync.Mutex
	readyQ  []*watch
	ready   chan struct{}
	drained []replication.WatchResponse // receive's buffer, reused

	progress progressAll
	retry    *time.Ticker // runs while a progress request is deferred
}

// watch is one watcher of a stream.
type watch struct {
	id     int64
	hw     *replication.Watcher // nil for a start below the compacted revision
	header int64                // the revision its created response reports
	// start is its start revision, 0 for "now". A progress response may
	// report a revision R to it only when R >= start-1: clientv3 resumes a
	// watcher after a progress response from R+1, which must not be below
	// its start.
	start            int64
	prevKV, fragment bool
	noPut, noDelete  bool
	notify           bool // progress_notify
	idle             bool // notify: nothing sent since the last tick
	ended            bool // the hub ended it; its ID stays until the client cancels it
	marks            []markKind
	holding          bool       // its mark of the progress round in flight has come: hold the rest
	held             []delivery // what came after that mark, sent once the round is answered
	countedInMetrics bool       // in the watchers gauge: started and not ended
	started          bool       // created: the send loop may receive its hub responses
	drained          bool       // its hub channel is closed and was read to the end
	queued           bool       // in readyQ; guarded by readyMu
}

// markKind says why a progress mark was asked for.
type markKind uint8

const (
	markNotify markKind = 1 << iota // progress_notify of an idle watcher
	markRound                       // a progress request for the whole stream
)

// progressAll is the state of WatchProgressRequest: answered with the
// revision R, from marks asked of every live watcher of the stream at once
// (Hub.RequestProgress), once all of them have come.
type progressAll struct {
	wanted      bool // a request is not answered yet
	inFlight    bool // marks asked for, not all come; requests wait meanwhile
	outstanding int  // marks of the round still to come
	rev         int64
	members     []*watch
}

// delivery is a hub response of w, or (end) the end of w's hub watcher
// with why.
type delivery struct {
	w    *watch
	resp replication.WatchResponse
	end  bool
	err  error
}

// watchOp is a request made ready by the receive loop.
type watchOp struct {
	create   *watchCreate
	cancelID int64
	cancel   bool
	progress bool
}

// watchCreate is a create request, with its hub watcher when it got one.
type watchCreate struct {
	id        int64 // as asked: autoWatchID for the server's choice
	refused   string
	w         *watch
	compacted int64 // the start is below this compacted revision
}

// recvLoop reads requests until the stream ends, preparing creates.
func (st *watchStream) recvLoop(ctx context.Context, reqs chan<- *watchOp, errc chan<- error) {
	for {
		req, err := st.grpc.Recv()
		if errors.Is(err, io.EOF) {
			// The client is done sending; its watches go on, as in etcd.
			close(reqs)
			return
		}
		if err != nil {
			errc <- err
			return
		}
		var op *watchOp
		switch r := req.RequestUnion.(type) {
		case *pb.WatchRequest_CreateRequest:
			if r.CreateRequest != nil {
				op = &watchOp{create: st.prepare(ctx, r.CreateRequest)}
			}
		case *pb.WatchRequest_CancelRequest:
			if r.CancelRequest != nil {
				op = &watchOp{cancel: true, cancelID: r.CancelRequest.WatchId}
			}
		case *pb.WatchRequest_ProgressRequest:
			if r.ProgressRequest != nil {
				op = &watchOp{progress: true}
			}
		default:
			st.log.Debug("unknown watch request ignored", "type", fmt.Sprintf("%T", r))
		}
		if op == nil {
			continue
		}
		select {
		case reqs <- op:
		case <-ctx.Done():
			return // a prepared hub watcher ends with ctx
		}
	}
}

// prepare checks a create request as etcd does and starts its hub watcher.
func (st *watchStream) prepare(ctx context.Context, r *pb.WatchCreateRequest) *watchCreate {
	c := &watchCreate{id: r.WatchId}
	key := r.Key
	if len(key) == 0 {
		key = []byte{0} // the smallest key, as etcd takes it
	}
	if r.StartRevision < 0 {
		c.refused = rpctypes.ErrCompacted.Error()
		return c
	}
	rng := store.KeyRange{Key: key, End: r.RangeEnd}
	if !rng.IsSingleKey() && !rng.IsOpenEnded() && bytes.Compare(key, r.RangeEnd) >= 0 {
		c.refused = reasonEmptyRange
		return c
	}
	w := &watch{
		start:    r.StartRevision,
		prevKV:   r.PrevKv,
		fragment: r.Fragment,
		notify:   r.ProgressNotify,
		idle:     true,
	}
	for _, f := range r.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.noDelete = true
		}
	}
	// Read before the hub's watch starts, so that it is at most the
	// revision after which the watch starts: a clientv3 watcher "from now"
	// resumes at its created response's revision, and must miss nothing.
	w.header = st.hub.Watermark()
	// The stream's context, not one of the watcher's own: a context per
	// watcher cost more than the hub watcher itself (target 9 of issue 17).
	// The send loop closes the watchers it knows of; one prepared but never
	// handed to it ends with the stream.
	hw, err := st.s.cfg.Client.Watch(ctx, replication.WatchRequest{
		Range: rng, StartRevision: r.StartRevision, PrevKV: r.PrevKv,
		Notify: func() { st.wake(w) },
	})
	var ce *store.CompactedError
	switch {
	case errors.As(err, &ce):
		c.compacted = ce.CompactRevision
		c.w = w // created, then canceled: etcd keeps its ID until the client cancels it
		return c
	case err != nil:
		c.refused = reason(err)
		return c
	}
	w.hw = hw
	c.w = w
	return c
}

// reason is the cancel_reason for err: the message of etcd's status for it.
func reason(err error) string { return status.Convert(toGRPC(err)).Message() }

// sendLoop serves the stream until it ends, and returns why.
func (st *watchStream) sendLoop(ctx context.Context, reqs <-chan *watchOp, recvErr <-chan error) error {
	interval := st.s.cfg.ProgressInterval
	if j := int64(interval) / 10; j > 0 {
		// etcd's jitter, so that streams opened together (a client
		// restarting) do not report progress together.
		interval += time.Duration(rand.Int64N(j))
	}
	notify := time.NewTicker(interval)
	defer notify.Stop()
	st.retry = time.NewTicker(progressRetryInterval)
	st.retry.Stop()
	defer st.retry.Stop()
	for {
		var (
			reqc   = reqs
			retryC <-chan time.Time
		)
		if st.progress.inFlight {
			reqc = nil // requests wait until the round is answered, as etcd answers them in order
		} else if st.progress.wanted {
			retryC = st.retry.C
		}
		var err error
		select {
		case <-ctx.Done():
			return streamError(ctx.Err())
		case rerr := <-recvErr:
			if ctx.Err() == nil && status.Code(rerr) != codes.Canceled {
				st.log.Warn("receiving from a watch stream failed", "err", rerr)
			}
			return streamError(rerr)
		case op, ok := <-reqc:
			if !ok {
				reqs = nil
				continue
			}
			err = st.handleOp(op)
		case <-st.ready:
			err = st.receive()
		case <-notify.C:
			st.notifyTick()
		case <-retryC:
			err = st.tryProgress()
		}
		if err != nil {
			if ctx.Err() == nil {
				st.log.Debug("sending on a watch stream failed", "err", err)
			}
			return err
		}
	}
}

// streamError is what Watch returns when the stream ends for err, as etcd.
func streamError(err error) error {
	if errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
		return rpctypes.ErrGRPCWatchCanceled
	}
	return err
}

func (st *watchStream) send(wr *pb.WatchResponse) error { return st.grpc.Send(wr) }

func (st *watchStream) handleOp(op *watchOp) error {
	switch {
	case op.create != nil:
		return st.create(op.create)
	case op.cancel:
		return st.cancel(op.cancelID)
	case op.progress:
		st.progress.wanted = true
		return st.tryProgress()
	}
	return nil
}

// refuse answers a create that got no watcher, as etcd: created and
// canceled at once, with the invalid ID and why.
func (st *watchStream) refuse(reason string) error {
	return st.send(&pb.WatchResponse{
		Header: st.s.header(st.hub.Watermark()), WatchId: invalidWatchID,
		Created: true, Canceled: true, CancelReason: reason,
	})
}

func (st *watchStream) create(c *watchCreate) error {
	if c.refused != "" {
		return st.refuse(c.refused)
	}
	w := c.w
	id := c.id
	if id == autoWatchID {
		for st.watches[st.nextID] != nil {
			st.nextID++
		}
		id = st.nextID
		st.nextID++
	} else if st.watches[id] != nil {
		w.stopIfStarted()
		return st.refuse(reasonDuplicateID)
	}
	if len(st.watches) >= maxWatchersPerStream {
		w.stopIfStarted()
		return st.refuse(fmt.Sprintf("etcdserver: too many watchers on one watch stream (at most %d)", maxWatchersPerStream))
	}
	w.id = id
	st.watches[id] = w
	if c.compacted > 0 {
		w.ended = true
	} else {
		st.s.metrics.watchers.Inc()
		w.countedInMetrics = true
	}
	if err := st.send(&pb.WatchResponse{Header: st.s.header(w.header), WatchId: id, Created: true}); err != nil {
		return err
	}
	if c.compacted > 0 {
		return st.sendCompacted(w, c.compacted)
	}
	w.started = true
	st.wake(w) // what the hub queued before
	return nil
}

func (w *watch) stopIfStarted() {
	if w != nil && w.hw != nil {
		w.hw.Close()
	}
}

// sendCompacted tells the client that w's start was compacted, as etcd:
// the header's revision is 0 there too.
func (st *watchStream) sendCompacted(w *watch, compacted int64) error {
	return st.send(&pb.WatchResponse{Header: st.s.header(0), WatchId: w.id, Canceled: true, CompactRevision: compacted})
}

// cancel ends a watcher at the client's request; an unknown ID gets no
// answer, as in etcd.
func (st *watchStream) cancel(id int64) error {
	w := st.watches[id]
	if w == nil {
		return nil
	}
	st.remove(w)
	return st.send(&pb.WatchResponse{Header: st.s.header(st.hub.Watermark()), WatchId: id, Canceled: true})
}

// remove forgets w and ends its hub watcher; what the hub still queued for
// it is dropped.
func (st *watchStream) remove(w *watch) {
	delete(st.watches, w.id)
	w.stopIfStarted()
	st.uncount(w)
}

func (st *watchStream) uncount(w *watch) {
	if w.countedInMetrics {
		w.countedInMetrics = false
		st.s.metrics.watchers.Dec()
	}
}

// wake tells the send loop that the hub queued something for w, or ended
// it. It is the hub's Notify: it must not block.
func (st *watchStream) wake(w *watch) {
	st.readyMu.Lock()
	if !w.queued {
		w.queued = true
		st.readyQ = append(st.readyQ, w)
	}
	st.readyMu.Unlock()
	select {
	case st.ready <- struct{}{}:
	default:
	}
}

// receive delivers what the hub has queued for the watchers it woke the
// send loop for. A watcher leaves readyQ before it is drained, so a
// response queued meanwhile wakes the loop again.
func (st *watchStream) receive() error {
	st.readyMu.Lock()
	ws := st.readyQ
	st.readyQ = nil
	for _, w := range ws {
		w.queued = false
	}
	st.readyMu.Unlock()
	for _, w := range ws {
		if !w.started || w.drained {
			continue // create wakes it once it has an ID
		}
		resps, ended := w.hw.Drain(st.drained[:0])
		st.drained = resps
		for _, resp := range resps {
			if err := st.deliver(delivery{w: w, resp: resp}); err != nil {
				return err
			}
		}
		clear(resps) // keep no events alive
		if ended {
			w.drained = true
			if err := st.deliver(delivery{w: w, end: true, err: w.hw.Err()}); err != nil {
				return err
			}
		}
	}
	return nil
}

// deliver handles a delivery, or holds it while a progress
// round waits for other watchers.
func (st *watchStream) deliver(d delivery) error {
	w := d.w
	if st.watches[w.id] != w || w.ended {
		return nil // canceled by the client meanwhile
	}
	if w.holding {
		w.held = append(w.held, d)
		return nil
	}
	return st.handle(d)
}

func (st *watchStream) handle(d delivery) error {
	w := d.w
	switch {
	case d.end:
		return st.ended(w, d.err, 0)
	case d.resp.Canceled:
		return st.ended(w, d.resp.Err, d.resp.CompactRevision)
	case d.resp.IsProgress():
		return st.mark(w, d.resp.Revision)
	default:
		return st.events(w, d.resp)
	}
}

// ended handles the end of w's hub watcher: a compaction under it (it was
// catching up), history changed on failover, the hub stopping, a failed
// read of previous values. The
// client is told, and w keeps its ID until the client cancels it, as etcd
// keeps a compacted watcher's.
func (st *watchStream) ended(w *watch, err error, compacted int64) error {
	if w.ended {
		return nil
	}
	w.ended = true
	st.uncount(w)
	if st.progress.inFlight && w.marks != nil {
		for _, k := range w.marks {
			if k&markRound != 0 { // its mark will never come
				st.progress.outstanding--
			}
		}
	}
	w.marks = nil
	if errors.Is(err, replication.ErrWatcherClosed) || errors.Is(err, context.Canceled) {
		return nil // ours: the stream is ending
	}
	var (
		ce *store.CompactedError
		hc *replication.HistoryChangedError
	)
	if errors.As(err, &ce) {
		compacted = ce.CompactRevision
	}
	var serr error
	switch {
	case errors.As(err, &hc):
		// etcd's compacted cancel, which makes clientv3 users and
		// Kubernetes re-list, with a reason that says why; the revision is
		// the first of the new history (WatchResponse.CompactRevision).
		serr = st.send(&pb.WatchResponse{
			Header: st.s.header(st.hub.Watermark()), WatchId: w.id, Canceled: true,
			CompactRevision: hc.Revision + 1, CancelReason: reason(err),
		})
	case compacted > 0:
		serr = st.sendCompacted(w, compacted)
	default:
		serr = st.send(&pb.WatchResponse{
			Header: st.s.header(st.hub.Watermark()), WatchId: w.id, Canceled: true, CancelReason: reason(err),
		})
	}
	if serr != nil {
		return serr
	}
	if st.progress.inFlight && st.progress.outstanding == 0 {
		return st.finishRound()
	}
	return nil
}

// events sends the events of one hub response, whole revisions, as one
// response (in fragments if the watcher asked and it is too large). Its
// header's revision is the hub response's, the last event's, as etcd's for
// a live watcher.
func (st *watchStream) events(w *watch, resp replication.WatchResponse) error {
	evs := make([]*mvccpb.Event, 0, len(resp.Events))
	for i := range resp.Events {
		ev := &resp.Events[i]
		if ev.Type == replication.EventPut && w.noPut || ev.Type == replication.EventDelete && w.noDelete {
			continue
		}
		evs = append(evs, toEvent(ev, w.prevKV))
	}
	if len(evs) == 0 {
		return nil // all filtered out: etcd sends nothing
	}
	w.idle = false
	wr := &pb.WatchResponse{Header: st.s.header(resp.Revision), WatchId: w.id, Events: evs}
	if !w.fragment {
		return st.send(wr)
	}
	return st.sendFragments(wr)
}

// toEvent is ev as etcd's watch reports it: a deletion's kv is its
// tombstone (key and mod revision only); prev_kv is never set on a
// creation, which has none.
func toEvent(ev *replication.Event, prevKV bool) *mvccpb.Event {
	out := &mvccpb.Event{Kv: &mvccpb.KeyValue{Key: ev.Key, ModRevision: ev.Revision}}
	if ev.Type == replication.EventDelete {
		out.Type = mvccpb.Event_DELETE
	} else {
		out.Type = mvccpb.Event_PUT
		out.Kv.CreateRevision, out.Kv.Version, out.Kv.Value, out.Kv.Lease = ev.CreateRevision, ev.Version, ev.Value, ev.Lease
	}
	created := ev.Type == replication.EventPut && ev.CreateRevision == ev.Revision
	if prevKV && ev.PrevKV != nil && !created {
		p := ev.PrevKV
		out.PrevKv = &mvccpb.KeyValue{
			Key: p.Key, Value: p.Value, CreateRevision: p.CreateRevision,
			ModRevision: p.ModRevision, Version: p.Version, Lease: p.Lease,
		}
	}
	return out
}

// sendFragments sends wr split as etcd splits it: when it is at least the
// request limit with etcd's gRPC overhead (MaxRequestBytes + 512 KiB, etcd's
// MaxRequestBytesWithOverhead) and has two events or more, in fragments
// each below that size (or of one event), all but the last marked Fragment.
func (st *watchStream) sendFragments(wr *pb.WatchResponse) error {
	limit := st.s.cfg.MaxRequestBytes + grpcOverheadBytes
	if len(wr.Events) < 2 || proto.Size(wr) < limit {
		return st.send(wr)
	}
	base := proto.Size(&pb.WatchResponse{Header: wr.Header, WatchId: wr.WatchId, Fragment: true})
	evs := wr.Events
	for len(evs) > 0 {
		n, size := 0, base
		for n < len(evs) {
			next := size + protowire.SizeTag(eventsField) + protowire.SizeBytes(proto.Size(evs[n]))
			if n > 0 && next >= limit {
				break
			}
			n, size = n+1, next
		}
		// A new message each time: grpc-go may still hold the last one.
		frag := &pb.WatchResponse{Header: wr.Header, WatchId: wr.WatchId, Events: evs[:n:n], Fragment: n < len(evs)}
		if err := st.send(frag); err != nil {
			return err
		}
		evs = evs[n:]
	}
	return nil
}

// mark handles a progress mark of w's, asked for by notifyTick or
// tryProgress (marks come in the order asked).
func (st *watchStream) mark(w *watch, rev int64) error {
	if len(w.marks) == 0 {
		st.log.Warn("a progress mark nobody asked for", "watch_id", w.id, "revision", rev)
		return nil
	}
	kind := w.marks[0]
	w.marks = w.marks[1:]
	if kind&markNotify != 0 && rev >= w.start-1 {
		if err := st.send(&pb.WatchResponse{Header: st.s.header(rev), WatchId: w.id}); err != nil {
			return err
		}
	}
	if kind&markRound != 0 && st.progress.inFlight {
		w.holding = true
		st.progress.rev = min(st.progress.rev, rev)
		st.progress.outstanding--
		if st.progress.outstanding == 0 {
			return st.finishRound()
		}
	}
	return nil
}

// notifyTick asks for a progress mark for every idle watcher that asked
// for progress_notify, as etcd's ticker does: one that was sent events
// since the last tick is skipped once, and one catching up gets none.
func (st *watchStream) notifyTick() {
	for _, w := range st.watches {
		if !w.notify || w.ended {
			continue
		}
		if w.idle && st.hub.RequestProgress(w.hw) {
			w.marks = append(w.marks, markNotify)
		}
		w.idle = true
	}
}

// tryProgress starts a round for a progress request: marks asked of every
// live watcher at once, at one watermark. It is deferred, and tried again
// every progressRetryInterval, while a watcher is catching up or has a
// start beyond the watermark's successor. (etcd v3.7.3 drops a request it
// cannot answer at once; deferring it, as etcd 3.5's deferredProgress did,
// answers every request.)
func (st *watchStream) tryProgress() error {
	if st.progress.inFlight || !st.progress.wanted {
		return nil
	}
	var members []*watch
	for _, w := range st.watches {
		if !w.ended {
			members = append(members, w)
		}
	}
	if len(members) == 0 {
		st.stopRetry()
		return st.send(&pb.WatchResponse{Header: st.s.header(st.hub.Watermark()), WatchId: invalidWatchID})
	}
	wm := st.hub.Watermark()
	hws := make([]*replication.Watcher, len(members))
	for i, w := range members {
		if w.start-1 > wm {
			st.retry.Reset(progressRetryInterval)
			return nil
		}
		hws[i] = w.hw
	}
	if !st.hub.RequestProgress(hws...) {
		st.retry.Reset(progressRetryInterval)
		return nil
	}
	st.retry.Stop()
	st.progress.inFlight = true
	st.progress.outstanding = len(members)
	st.progress.rev = noMark
	st.progress.members = members
	for _, w := range members {
		w.marks = append(w.marks, markRound)
	}
	return nil
}

func (st *watchStream) stopRetry() {
	st.progress.wanted = false
	st.retry.Stop()
}

// finishRound answers the progress request once every member's mark has
// come: every member has been sent every event up to the marks' revision
// and, held since, none after it. Then what was held is sent.
func (st *watchStream) finishRound() error {
	p := &st.progress
	p.inFlight = false
	members := p.members
	p.members = nil
	if p.rev < noMark {
		st.stopRetry()
		if err := st.send(&pb.WatchResponse{Header: st.s.header(p.rev), WatchId: invalidWatchID}); err != nil {
			return err
		}
	}
	for _, w := range members {
		held := w.held
		w.held, w.holding = nil, false
		for _, d := range held {
			if err := st.deliver(d); err != nil {
				return err
			}
		}
	}
	// Every member ended before its mark came: ask again, of those left.
	return st.tryProgress()
}

// noMark is the round's revision before a mark has come.
const noMark = 1<<63 - 1
