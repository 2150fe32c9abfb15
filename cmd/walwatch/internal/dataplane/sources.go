package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/cmd/walwatch/internal/routes"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/wire"
)

// The sources dp follows.
var (
	_ Source = (*ControlPlane)(nil)
	_ Source = (*Direct)(nil)
)

// Reconnect backoff bounds: each wait is a random part (jitter) of a
// doubling base, so data planes that lost one control plane do not return to
// it all at once.
var (
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
)

// errCompacted means the source no longer has the changes after our
// revision: only a full reload can bring the table back.
var errCompacted = errors.New("watch start revision was compacted: reloading all routes")

// retry runs once until ctx ends, waiting with backoff and jitter after each
// failure and logging that the proxy keeps serving what it has.
func retry(ctx context.Context, log *slog.Logger, p *Proxy, once func(ctx context.Context) error) error {
	backoff := backoffMin
	for {
		start := time.Now()
		err := once(ctx)
		p.SetConnected(false)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > backoffMax {
			backoff = backoffMin // it had been working: start over
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		log.Warn("watch source down; serving the last routes", "routes", p.Table().Len(),
			"revision", p.Revision(), "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(2*backoff, backoffMax)
	}
}

// ControlPlane follows a cp's /v1/watch stream, resuming with Last-Event-ID.
type ControlPlane struct {
	URL    string // the cp's base URL
	Token  string // bearer token, if the cp wants one
	Client *http.Client
	Log    *slog.Logger
	// IdleTimeout ends a stream that carries nothing, not even a progress
	// comment, for this long: the connection is presumed dead.
	IdleTimeout time.Duration

	reload bool
}

func (c *ControlPlane) Run(ctx context.Context, p *Proxy) error {
	return retry(ctx, c.Log, p, func(ctx context.Context) error { return c.once(ctx, p) })
}

func (c *ControlPlane) get(ctx context.Context, path string, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.URL, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.Client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	return resp, nil
}

// load replaces the table with every route the cp has.
func (c *ControlPlane) load(ctx context.Context, p *Proxy) error {
	resp, err := c.get(ctx, routes.Prefix, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Revision int64 `json:"revision"`
		Routes   []struct {
			Key   string          `json:"key"`
			Value json.RawMessage `json:"value"`
		} `json:"routes"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&body); err != nil {
		return fmt.Errorf("read routes: %w", err)
	}
	kvs := make(map[string][]byte, len(body.Routes))
	for _, r := range body.Routes {
		kvs[r.Key] = r.Value
	}
	p.Replace(body.Revision, kvs)
	return nil
}

func (c *ControlPlane) once(ctx context.Context, p *Proxy) error {
	if !p.Loaded() || c.reload {
		if err := c.load(ctx, p); err != nil {
			return err
		}
		c.reload = false
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	from := p.Revision()
	resp, err := c.get(ctx, "/v1/watch?prefix="+url.QueryEscape(routes.Prefix),
		http.Header{"Last-Event-Id": {strconv.FormatInt(from, 10)}, "Accept": {"text/event-stream"}})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	p.SetConnected(true)
	c.Log.Info("watching routes", "source", c.URL, "after_revision", from)

	var idled atomic.Bool
	idle := time.AfterFunc(c.IdleTimeout, func() { idled.Store(true); cancel() })
	defer idle.Stop()
	r := wire.NewReader(resp.Body)
	for {
		m, err := r.Next()
		if err != nil {
			if idled.Load() {
				return fmt.Errorf("no message for %s: presuming the connection dead", c.IdleTimeout)
			}
			return fmt.Errorf("watch stream: %w", err)
		}
		idle.Reset(c.IdleTimeout)
		switch {
		case m.Comment != "":
			if rev, ok := strings.CutPrefix(m.Comment, "progress "); ok {
				if n, err := strconv.ParseInt(rev, 10, 64); err == nil {
					p.Progress(n)
				}
			}
		case m.Event == "compacted":
			c.reload = true
			return errCompacted
		default:
			evs, err := m.Events()
			if err != nil {
				return fmt.Errorf("watch stream: message %s: %w", m.ID, err)
			}
			p.Apply(evs)
		}
	}
}

// Direct follows PostgreSQL directly, through a client with a watch hub of
// its own on a temporary slot (a single node, no cp).
type Direct struct {
	Client *walwatch.Client
	Log    *slog.Logger
}

// Run loads the routes and follows them until ctx ends, or the client's hub
// fails: then it returns why.
func (d *Direct) Run(ctx context.Context, p *Proxy) error {
	select {
	case <-d.Client.Hub().Ready():
	case <-d.Client.Done():
		return fmt.Errorf("watch hub stopped before it was ready: %w", d.Client.Err())
	case <-ctx.Done():
		return nil
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-d.Client.Done(): // nothing more will come: stop retrying
			cancel()
		case <-runCtx.Done():
		}
	}()
	reload := true
	err := retry(runCtx, d.Log, p, func(ctx context.Context) error {
		rng := store.Prefix([]byte(routes.Prefix))
		if reload {
			// At the newest settled revision, which needs no wait: a
			// transaction holding a revision open does not keep the routes
			// from loading, and the watch from the next brings the rest.
			rev, err := d.Client.ReadRevision(ctx)
			if err != nil {
				return err
			}
			res, err := d.Client.Range(ctx, store.RangeRequest{KeyRange: rng, Revision: rev})
			if err != nil {
				return err
			}
			kvs := make(map[string][]byte, len(res.KVs))
			for _, kv := range res.KVs {
				kvs[string(kv.Key)] = kv.Value
			}
			p.Replace(res.Revision, kvs)
			reload = false
		}
		w, err := d.Client.Watch(ctx, replication.WatchRequest{Range: rng, StartRevision: p.Revision() + 1, ProgressNotify: true})
		if err != nil {
			if errors.Is(err, store.ErrCompacted) {
				reload = true
			}
			return err
		}
		defer w.Close()
		p.SetConnected(true)
		for resp := range w.C {
			if resp.IsProgress() {
				p.Progress(resp.Revision)
				continue
			}
			_ = wire.ForEachRevision(resp.Events, func(evs []wire.Event) error { p.Apply(evs); return nil })
		}
		if errors.Is(w.Err(), store.ErrCompacted) {
			reload = true
		}
		return w.Err()
	})
	if ctx.Err() == nil {
		if herr := d.Client.Err(); herr != nil {
			return fmt.Errorf("watch hub stopped: %w", herr)
		}
	}
	return err
}
