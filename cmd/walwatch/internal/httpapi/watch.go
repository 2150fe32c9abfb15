package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/wire"
)

// watch streams changes as Server-Sent Events (see package sse): ?key=K or
// ?prefix=P, from ?rev=N or, on a reconnect, after the Last-Event-ID the
// client sends.
func (s *Server) watch(w http.ResponseWriter, r *http.Request) error {
	q, err := queryParams(r, "key", "prefix", "rev")
	if err != nil {
		return err
	}
	key, _ := q.get("key")
	prefix, _ := q.get("prefix")
	var rng store.KeyRange
	switch {
	case key != "" && prefix == "":
		rng = store.Key([]byte(key))
	case prefix != "" && key == "":
		rng = store.Prefix([]byte(prefix))
	default:
		return fmt.Errorf("%w: give exactly one of key and prefix", errBadRequest)
	}
	if len(rng.Key) > s.cfg.Client.Store().Limits().MaxKeySize {
		return store.ErrKeyTooLarge
	}
	start, err := q.revision()
	if err != nil {
		return err
	}
	next, resume, err := lastEventID(r)
	if err != nil {
		return err
	}
	if resume {
		start = next
	}

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if s.cfg.Stopping != nil {
		go func() {
			select {
			case <-s.cfg.Stopping:
				cancel() // shutting down: end the stream so the server can stop
			case <-ctx.Done():
			}
		}()
	}
	watcher, err := s.cfg.Client.Watch(ctx, replication.WatchRequest{Range: rng, StartRevision: start, ProgressNotify: true})
	var ce *store.CompactedError
	switch {
	case err == nil, errors.As(err, &ce):
	case ctx.Err() != nil && r.Context().Err() == nil:
		// Shutting down while the hub was not ready yet.
		return fmt.Errorf("%w: the server is shutting down", errNotReady)
	default:
		// A watch from a revision reads the compacted one from PostgreSQL.
		return store.TypedError(err, start)
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // proxies must not buffer the stream
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if ce != nil {
		_ = wire.WriteCompacted(w, ce.CompactRevision)
		_ = rc.Flush()
		return nil
	}
	defer watcher.Close()
	if err := rc.Flush(); err != nil {
		return nil
	}
	for resp := range watcher.C {
		if err := writeResponse(w, resp); err != nil {
			return nil // the client is gone
		}
		if err := rc.Flush(); err != nil {
			return nil
		}
	}
	return nil
}

// writeResponse writes one hub response: a message per revision, a progress
// comment, or the compacted message that ends the stream (for a compaction,
// or history changed on failover: either way the client re-lists).
func writeResponse(w io.Writer, resp replication.WatchResponse) error {
	var (
		ce *store.CompactedError
		hc *replication.HistoryChangedError
	)
	switch {
	case resp.Canceled && errors.As(resp.Err, &ce):
		return wire.WriteCompacted(w, ce.CompactRevision)
	case resp.Canceled && errors.As(resp.Err, &hc):
		return wire.WriteHistoryChanged(w, hc.Revision+1, hc.Error())
	case resp.Canceled:
		return nil
	case len(resp.Events) == 0:
		return wire.WriteProgress(w, resp.Revision)
	}
	return wire.ForEachRevision(resp.Events, func(evs []wire.Event) error { return wire.WriteRevision(w, evs) })
}
