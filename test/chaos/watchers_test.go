package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/chaos/check"
	"github.com/walwatch/walwatch/wire"
)

// watcher watches one key or prefix through one API for the whole
// history, as a series of watches: it cancels now and then and resumes,
// mostly from where it was, sometimes from an older revision, and resumes
// whenever the server ends a watch or its stream breaks.
type watcher struct {
	id       int
	r        *run
	rnd      *rand.Rand
	via      string // etcd, sse or hub
	key, end string // end is "" for one key, else the prefix's end
	prefix   bool

	// pos is the revision up to which the current watch has delivered
	// (its start minus one until it delivers anything): what the drain
	// waits on.
	pos  atomic.Int64
	kick chan struct{} // a fault asks every watcher to resume now
}

func newWatcher(id int, r *run, seed int64) *watcher {
	w := &watcher{id: id, r: r, rnd: rand.New(rand.NewPCG(uint64(seed), uint64(1000+id))), kick: make(chan struct{}, 1)}
	w.via = []string{"etcd", "sse", "hub"}[id%3]
	switch n := w.rnd.IntN(4); n {
	case 0:
		w.key = allKeys[w.rnd.IntN(len(allKeys))]
	case 1, 2:
		w.key, w.prefix = prefixes[n-1], true
	default:
		w.key, w.prefix = "/c/", true
	}
	if w.prefix {
		w.end = prefixEnd(w.key)
	}
	return w
}

// nudge asks the watcher to cancel its watch and resume.
func (w *watcher) nudge() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// loop runs watches until stop ends. While traffic lasts it cancels and
// resumes at random moments; after, it only resumes what the server ends.
func (w *watcher) loop(traffic, stop context.Context) {
	next := int64(1)
	for stop.Err() == nil {
		rec := check.Watch{Watcher: w.id, Via: w.via, Key: w.key, End: w.end, Start: next,
			PrevKV: w.via != "sse" && w.rnd.IntN(2) == 0}
		w.pos.Store(next - 1)
		var hold <-chan time.Time
		if traffic.Err() == nil {
			hold = time.After(time.Duration(500+w.rnd.IntN(6000)) * time.Millisecond)
		}
		rec.Opened = w.r.rec.now()
		cancelled, kicked := w.session(stop, hold, &rec)
		rec.Closed = w.r.rec.now()
		w.r.rec.watch(rec)

		last := lastDelivered(rec)
		var compacted int64
		if n := len(rec.Responses); n > 0 && rec.Responses[n-1].Ended {
			compacted = rec.Responses[n-1].Compacted
		}
		switch {
		case compacted > 0:
			w.r.sawCompacted(compacted)
			next = compacted
		case kicked || cancelled && traffic.Err() == nil && w.rnd.IntN(4) == 0:
			// Resume from an older revision: a catch-up, perhaps
			// from the table, perhaps compacted.
			low := max(1, w.r.compacted.Load())
			if last > low {
				next = low + w.rnd.Int64N(last-low+1)
			}
		case last >= next:
			next = last + 1
		}
		if !cancelled && compacted == 0 {
			// The stream broke or never opened: something is down.
			select {
			case <-stop.Done():
			case <-time.After(time.Duration(50+w.rnd.IntN(200)) * time.Millisecond):
			}
		}
	}
}

// lastDelivered is the newest revision a watch delivered, by event or by
// progress mark; its start minus one if none.
func lastDelivered(w check.Watch) int64 {
	last := w.Start - 1
	for _, r := range w.Responses {
		for _, ev := range r.Events {
			last = max(last, ev.KV.ModRevision)
		}
		last = max(last, r.Progress)
	}
	return last
}

// session runs one watch until the server ends it or its stream breaks
// (false), or stop, hold or a nudge (kicked) cancels it (true).
func (w *watcher) session(stop context.Context, hold <-chan time.Time, rec *check.Watch) (cancelled, kicked bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resps := make(chan check.Response)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var err error
		switch w.via {
		case "etcd":
			err = w.etcd(ctx, rec, resps)
		case "sse":
			err = w.sse(ctx, rec, resps)
		case "hub":
			err = w.hub(ctx, rec, resps)
		}
		if err != nil && ctx.Err() == nil {
			send(ctx, resps, check.Response{Ended: true, Err: err.Error()})
		}
	}()
	for {
		select {
		case resp := <-resps:
			resp.At = w.r.rec.now()
			rec.Responses = append(rec.Responses, resp)
			if resp.Ended {
				cancel()
				<-done
				return false, false
			}
			w.pos.Store(lastDelivered(*rec))
			continue
		case <-done:
			return false, false
		case <-stop.Done():
		case <-hold:
		case <-w.kick:
			kicked = true
		}
		cancel()
		<-done
		return true, kicked
	}
}

// send hands a response to the session, unless it was cancelled.
func send(ctx context.Context, ch chan<- check.Response, r check.Response) bool {
	select {
	case ch <- r:
		return true
	case <-ctx.Done():
		return false
	}
}

// ---- etcd ----

// etcd watches through etcd's Watch. clientv3 resumes a broken stream by
// itself, from after the last revision it delivered, so one watch may span
// a cp restart.
func (w *watcher) etcd(ctx context.Context, rec *check.Watch, out chan<- check.Response) error {
	opts := []clientv3.OpOption{clientv3.WithRev(rec.Start), clientv3.WithProgressNotify()}
	if rec.End != "" {
		opts = append(opts, clientv3.WithRange(rec.End))
	}
	if rec.PrevKV {
		opts = append(opts, clientv3.WithPrevKV())
	}
	for resp := range w.r.e.etcd.Watch(ctx, rec.Key, opts...) {
		var r check.Response
		switch {
		case resp.CompactRevision != 0:
			r = check.Response{Ended: true, Compacted: resp.CompactRevision}
		case resp.Canceled || resp.Err() != nil:
			r = check.Response{Ended: true, Err: fmt.Sprintf("canceled: %v (%s)", resp.Err(), resp.CancelReason)}
		case resp.IsProgressNotify():
			r = check.Response{Progress: resp.Header.Revision}
		default:
			for _, ev := range resp.Events {
				e := check.Event{Type: check.EventPut, KV: etcdKV(ev.Kv)}
				if ev.Type == mvccpb.DELETE {
					e.Type = check.EventDelete
				}
				if ev.PrevKv != nil {
					p := etcdKV(ev.PrevKv)
					e.PrevKV = &p
				}
				r.Events = append(r.Events, e)
			}
		}
		if !send(ctx, out, r) || r.Ended {
			return nil
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("etcd watch channel closed")
}

func etcdKV(kv *mvccpb.KeyValue) check.KV {
	return check.KV{Key: string(kv.Key), Value: string(kv.Value), CreateRevision: kv.CreateRevision,
		ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease}
}

// ---- Server-Sent Events ----

// sseClient has no timeout: a watch lasts. Connecting is bounded by the
// session's context and the dialer's default.
var sseClient = &http.Client{}

// sse watches through GET /v1/watch, starting from ?rev= or, now and then,
// from Last-Event-ID (the revision before the start) as a reconnecting
// browser would.
func (w *watcher) sse(ctx context.Context, rec *check.Watch, out chan<- check.Response) error {
	q := url.Values{}
	if w.prefix {
		q.Set("prefix", rec.Key)
	} else {
		q.Set("key", rec.Key)
	}
	lastID := rec.Start > 1 && w.rnd.IntN(2) == 0
	if !lastID {
		q.Set("rev", strconv.FormatInt(rec.Start, 10))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+w.r.e.cp.httpAddr+"/v1/watch?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	if lastID {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(rec.Start-1, 10))
	}
	resp, err := sseClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("GET /v1/watch: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	rd := wire.NewReader(resp.Body)
	for {
		m, err := rd.Next()
		if err != nil {
			return fmt.Errorf("watch stream: %w", err)
		}
		var r check.Response
		switch {
		case m.Event == "" && m.ID == "":
			rev, ok := strings.CutPrefix(m.Comment, "progress ")
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(rev, 10, 64)
			if err != nil {
				return fmt.Errorf("progress comment %q: %w", m.Comment, err)
			}
			r.Progress = n
		case m.Event == "compacted":
			var c wire.Compacted
			if err := json.Unmarshal(m.Data, &c); err != nil {
				return fmt.Errorf("compacted message %q: %w", m.Data, err)
			}
			r = check.Response{Ended: true, Compacted: c.CompactRevision}
		default:
			evs, err := m.Events()
			if err != nil {
				return fmt.Errorf("message id=%s event=%s: %w", m.ID, m.Event, err)
			}
			for _, ev := range evs {
				e := check.Event{Type: check.EventPut, KV: check.KV{Key: ev.Key, Value: ev.Value,
					CreateRevision: ev.CreateRevision, ModRevision: ev.Revision, Version: ev.Version}}
				if ev.Type == "DELETE" {
					e.Type = check.EventDelete
				}
				r.Events = append(r.Events, e)
			}
		}
		if !send(ctx, out, r) || r.Ended {
			return nil
		}
	}
}

// ---- the Go hub ----

// hub watches through the test process's own walwatch client.
func (w *watcher) hub(ctx context.Context, rec *check.Watch, out chan<- check.Response) error {
	rng := store.Key([]byte(rec.Key))
	if w.prefix {
		rng = store.Prefix([]byte(rec.Key))
	}
	wt, err := w.r.e.hub.Watch(ctx, replication.WatchRequest{Range: rng, StartRevision: rec.Start, PrevKV: rec.PrevKV, ProgressNotify: true})
	var ce *store.CompactedError
	if errors.As(err, &ce) {
		send(ctx, out, check.Response{Ended: true, Compacted: ce.CompactRevision})
		return nil
	}
	if err != nil {
		return err
	}
	defer wt.Close()
	for resp := range wt.C {
		var r check.Response
		switch {
		case resp.Canceled && errors.As(resp.Err, &ce):
			r = check.Response{Ended: true, Compacted: ce.CompactRevision}
		case resp.Canceled && resp.CompactRevision != 0:
			r = check.Response{Ended: true, Compacted: resp.CompactRevision}
		case resp.Canceled:
			if ctx.Err() != nil {
				return nil
			}
			r = check.Response{Ended: true, Err: fmt.Sprintf("canceled: %v", resp.Err)}
		case resp.IsProgress():
			r.Progress = resp.Revision
		default:
			for _, ev := range resp.Events {
				e := check.Event{Type: check.EventPut, KV: check.KV{Key: string(ev.Key), Value: string(ev.Value),
					CreateRevision: ev.CreateRevision, ModRevision: ev.Revision, Version: ev.Version, Lease: ev.Lease}}
				if ev.Type == replication.EventDelete {
					e.Type = check.EventDelete
				}
				if ev.PrevKV != nil {
					e.PrevKV = &check.KV{Key: string(ev.PrevKV.Key), Value: string(ev.PrevKV.Value),
						CreateRevision: ev.PrevKV.CreateRevision, ModRevision: ev.PrevKV.ModRevision,
						Version: ev.PrevKV.Version, Lease: ev.PrevKV.Lease}
				}
				r.Events = append(r.Events, e)
			}
		}
		if !send(ctx, out, r) || r.Ended {
			return nil
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("hub watch channel closed")
}
