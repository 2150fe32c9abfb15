package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/walwatch/walwatch/cmd/walwatch/internal/routes"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/wire"
)

// routeKV is a route in responses: a key as package wire shapes it, with a
// value that is valid JSON shown as JSON, or as a string when someone stored
// something else there.
type routeKV struct {
	wire.KV
	Value any `json:"value"`
}

func routeJSON(kv store.KeyValue) routeKV {
	out := routeKV{KV: wire.NewKV(kv)}
	out.Value = out.KV.Value
	if json.Valid(kv.Value) {
		out.Value = json.RawMessage(kv.Value)
	}
	return out
}

// read reads r at rev (0: the latest, so a client reads its own writes)
// through the client, which waits until that revision is settled: the
// answer never changes and a watch from the next revision misses nothing. A
// wait that runs out is walwatch.ErrNotSettled, a 503.
func (s *Server) read(ctx context.Context, r store.KeyRange, rev, limit int64) (store.RangeResponse, error) {
	return s.cfg.Client.Range(ctx, store.RangeRequest{KeyRange: r, Revision: rev, Limit: limit})
}

// body returns r's body, refusing more than the store takes as a value.
func (s *Server) body(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.cfg.Client.Store().Limits().MaxValueSize)))
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	return b, nil
}

func (s *Server) putRoute(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := routes.ValidateName(name); err != nil {
		return err
	}
	if _, err := queryParams(r); err != nil {
		return err
	}
	b, err := s.body(w, r)
	if err != nil {
		return err
	}
	rt, err := routes.Parse(b)
	if err != nil {
		return err
	}
	value, _ := json.Marshal(rt) // stored in one canonical form
	res, err := s.cfg.Client.Put(r.Context(), []byte(routes.Key(name)), value)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int64{"revision": res.Revision})
	return nil
}

func (s *Server) getRoute(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := routes.ValidateName(name); err != nil {
		return err
	}
	q, err := queryParams(r, "rev")
	if err != nil {
		return err
	}
	rev, err := q.revision()
	if err != nil {
		return err
	}
	res, err := s.read(r.Context(), store.Key([]byte(routes.Key(name))), rev, 0)
	if err != nil {
		return err
	}
	if len(res.KVs) == 0 {
		return fmt.Errorf("%w: route %q at revision %d", errNotFound, name, res.Revision)
	}
	out := struct {
		routeKV
		Revision int64 `json:"revision"`
	}{routeJSON(res.KVs[0]), res.Revision}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) listRoutes(w http.ResponseWriter, r *http.Request) error {
	q, err := queryParams(r, "rev")
	if err != nil {
		return err
	}
	rev, err := q.revision()
	if err != nil {
		return err
	}
	res, err := s.read(r.Context(), store.Prefix([]byte(routes.Prefix)), rev, 0)
	if err != nil {
		return err
	}
	out := struct {
		Revision int64     `json:"revision"`
		Routes   []routeKV `json:"routes"`
	}{res.Revision, make([]routeKV, len(res.KVs))}
	for i, kv := range res.KVs {
		out.Routes[i] = routeJSON(kv)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) deleteRoute(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := routes.ValidateName(name); err != nil {
		return err
	}
	if _, err := queryParams(r); err != nil {
		return err
	}
	res, err := s.cfg.Client.Delete(r.Context(), store.Key([]byte(routes.Key(name))))
	if err != nil {
		return err
	}
	if res.Deleted == 0 {
		return fmt.Errorf("%w: route %q", errNotFound, name)
	}
	writeJSON(w, http.StatusOK, map[string]int64{"revision": res.Revision})
	return nil
}

// kvRange is the key (or prefix, with ?prefix=true) a /v1/kv/ request names.
// Keys are paths: /v1/kv/a/b names the key "/a/b".
func kvRange(r *http.Request, q params) (store.KeyRange, error) {
	key := []byte("/" + r.PathValue("key"))
	prefix, err := q.boolean("prefix")
	if err != nil {
		return store.KeyRange{}, err
	}
	if prefix {
		return store.Prefix(key), nil
	}
	return store.Key(key), nil
}

// putKey sets a key, attached to ?lease=ID if given (a put without it
// detaches the key from its lease, as etcd's).
func (s *Server) putKey(w http.ResponseWriter, r *http.Request) error {
	q, err := queryParams(r, "prefix", "lease")
	if err != nil {
		return err
	}
	rng, err := kvRange(r, q)
	if err != nil {
		return err
	}
	if !rng.IsSingleKey() {
		return fmt.Errorf("%w: a put names one key, not a prefix", errBadRequest)
	}
	lease, err := q.lease()
	if err != nil {
		return err
	}
	value, err := s.body(w, r)
	if err != nil {
		return err
	}
	var res store.PutResponse
	if lease == 0 {
		res, err = s.cfg.Client.Put(r.Context(), rng.Key, value)
	} else {
		res, err = s.cfg.Client.Store().PutLease(r.Context(), rng.Key, value, lease)
		if errors.Is(err, store.ErrLeaseNotFound) {
			err = leaseNotFound(lease)
		}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int64{"revision": res.Revision})
	return nil
}

func (s *Server) getKey(w http.ResponseWriter, r *http.Request) error {
	q, err := queryParams(r, "prefix", "rev", "limit")
	if err != nil {
		return err
	}
	rng, err := kvRange(r, q)
	if err != nil {
		return err
	}
	rev, err := q.revision()
	if err != nil {
		return err
	}
	limit, err := q.limit()
	if err != nil {
		return err
	}
	res, err := s.read(r.Context(), rng, rev, limit)
	if err != nil {
		return err
	}
	if rng.IsSingleKey() && len(res.KVs) == 0 {
		return fmt.Errorf("%w: key %q at revision %d", errNotFound, rng.Key, res.Revision)
	}
	out := struct {
		Revision int64     `json:"revision"`
		KVs      []wire.KV `json:"kvs"`
		More     bool      `json:"more"`
	}{res.Revision, make([]wire.KV, len(res.KVs)), res.More}
	for i, kv := range res.KVs {
		out.KVs[i] = wire.NewKV(kv)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request) error {
	q, err := queryParams(r, "prefix")
	if err != nil {
		return err
	}
	rng, err := kvRange(r, q)
	if err != nil {
		return err
	}
	res, err := s.cfg.Client.Delete(r.Context(), rng)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int64{"revision": res.Revision, "deleted": res.Deleted})
	return nil
}

// compactRequest is POST /v1/compact's body: exactly one field.
type compactRequest struct {
	Revision   *int64  `json:"revision"`
	OlderThan  *string `json:"older_than"`
	KeepLatest *bool   `json:"keep_latest"`
}

func (s *Server) compact(w http.ResponseWriter, r *http.Request) error {
	if _, err := queryParams(r); err != nil {
		return err
	}
	b, err := s.body(w, r)
	if err != nil {
		return err
	}
	var req compactRequest
	if err := decodeStrict(b, &req); err != nil {
		return err
	}
	var (
		res store.CompactResponse
		n   int
	)
	for _, set := range []bool{req.Revision != nil, req.OlderThan != nil, req.KeepLatest != nil && *req.KeepLatest} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("%w: give exactly one of revision, older_than, keep_latest", errBadRequest)
	}
	switch {
	case req.Revision != nil:
		res, err = s.cfg.Client.Compact(r.Context(), *req.Revision)
	case req.OlderThan != nil:
		age, perr := time.ParseDuration(*req.OlderThan)
		if perr != nil {
			return fmt.Errorf("%w: older_than: %v", errBadRequest, perr)
		}
		res, err = s.cfg.Client.CompactOlderThan(r.Context(), age)
	default:
		res, err = s.cfg.Client.CompactKeepLatest(r.Context())
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int64{"compact_revision": res.CompactRevision, "removed": res.Removed})
	return nil
}

// decodeStrict decodes one JSON object, refusing unknown fields.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: data after the JSON object", errBadRequest)
	}
	return nil
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) error {
	if _, err := queryParams(r); err != nil {
		return err
	}
	cur, compacted, err := s.cfg.Client.Store().Revision(r.Context())
	if err != nil {
		return err
	}
	out := struct {
		Revision        int64                 `json:"revision"`
		CurrentRevision int64                 `json:"current_revision"`
		CompactRevision int64                 `json:"compact_revision"`
		Slot            *replication.SlotView `json:"slot"`
	}{Revision: s.cfg.Client.Hub().Watermark(), CurrentRevision: cur, CompactRevision: compacted}
	if s.cfg.Slot != "" {
		info, err := replication.GetSlot(r.Context(), s.cfg.Client.Store().Pool(), s.cfg.Slot)
		if err != nil && !errors.Is(err, replication.ErrSlotNotFound) {
			return fmt.Errorf("status: %w", store.TypedError(err, 0))
		}
		if err == nil {
			v := replication.NewSlotView(info, replication.LargeWALHeld)
			out.Slot = &v
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
