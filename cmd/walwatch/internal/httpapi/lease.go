package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/wire"
)

// Lease IDs on the wire. etcd's are int64s, and the IDs the database picks
// are random ones, most above 2^53, where a JavaScript number (and jq before
// 1.7) loses digits. So every lease in a response carries its ID twice: "id",
// a JSON number exact for Go, Python and anything that reads int64s, and
// "id_hex", a string of 16 hex digits, exactly as etcdctl prints it, that
// no client can round. A lease ID in a URL (the path, or ?lease= on a put) is
// either form: decimal digits, or 0x and the hex digits.

// Lease is a lease in responses, and in the CLI's -o json: the ID in both
// forms, its granted TTL in seconds and, from GET /v1/leases/{id}, the
// seconds it has left and (with ?keys=true) its keys.
type Lease struct {
	ID    int64  `json:"id"`
	IDHex string `json:"id_hex"`
	TTL   int64  `json:"ttl"`
	// Remaining is the seconds left, rounded up; a pointer so that grant
	// and keep-alive answers, which have no such thing, leave it out.
	Remaining *int64     `json:"remaining,omitempty"`
	Keys      []LeaseKey `json:"keys,omitzero"` // nil: not asked for; asked and none: []
}

// LeaseKey is a key attached to a lease, as package wire puts keys: UTF-8
// as text, anything else base64 in key_base64.
type LeaseKey struct {
	Key       string `json:"key"`
	KeyBase64 string `json:"key_base64,omitempty"`
}

// LeaseRef is a lease in a list: its ID in both forms.
type LeaseRef struct {
	ID    int64  `json:"id"`
	IDHex string `json:"id_hex"`
}

// LeaseIDHex is id as etcdctl prints it: 16 hex digits.
func LeaseIDHex(id int64) string { return fmt.Sprintf("%016x", id) }

// NewLease converts a store lease: its ID and TTL, with timeToLive the
// seconds it has left, and with keys its keys (empty, not nil, when it has
// none).
func NewLease(l store.Lease, timeToLive, keys bool) Lease {
	out := Lease{ID: l.ID, IDHex: LeaseIDHex(l.ID), TTL: l.TTL}
	if timeToLive {
		remaining := l.Remaining
		out.Remaining = &remaining
	}
	if keys {
		out.Keys = make([]LeaseKey, len(l.Keys))
		for i, k := range l.Keys {
			out.Keys[i].Key, out.Keys[i].KeyBase64 = wire.Text(k)
		}
	}
	return out
}

// maxLeaseBody bounds POST /v1/leases's body, {"ttl": N, "id": N}: a few
// dozen bytes, so a kibibyte is plenty and anything larger is no lease
// request.
const maxLeaseBody = 1 << 10

var errLeaseID = errors.New("not a lease ID")

// parseLeaseID reads a lease ID from a URL: decimal digits, or 0x (or 0X)
// and 1 to 16 hex digits as etcdctl prints them, within int64. Nothing else:
// no sign, space or underscore. Zero is no lease.
func parseLeaseID(s string) (int64, error) {
	if hex, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		if hex == "" || len(hex) > 16 || strings.ContainsFunc(hex, func(r rune) bool {
			return (r < '0' || r > '9') && (r < 'a' || r > 'f')
		}) {
			return 0, errLeaseID
		}
		id, err := strconv.ParseInt(hex, 16, 64)
		if err != nil {
			return 0, errOutOfRange // 16 hex digits past int64
		}
		return id, nil
	}
	id, err := decimal(s)
	if errors.Is(err, errNotDecimal) {
		return 0, errLeaseID
	}
	return id, err
}

// leaseParam reads the {id} of a /v1/leases/{id} path.
func leaseParam(r *http.Request) (int64, error) {
	v := r.PathValue("id")
	id, err := parseLeaseID(v)
	switch {
	case errors.Is(err, errOutOfRange):
		return 0, fmt.Errorf("%w: lease ID %s is out of range", errBadRequest, v)
	case err != nil:
		return 0, fmt.Errorf("%w: %q is not a lease ID (decimal digits, or 0x and hex digits)", errBadRequest, v)
	}
	return id, nil
}

// lease reads ?lease=ID: 0 (no lease) when absent.
func (p params) lease() (int64, error) {
	v, ok := p.get("lease")
	if !ok {
		return 0, nil
	}
	id, err := parseLeaseID(v)
	switch {
	case errors.Is(err, errOutOfRange):
		return 0, fmt.Errorf("%w: lease=%s is out of range", errBadRequest, v)
	case err != nil:
		return 0, fmt.Errorf("%w: lease=%q must be a lease ID (decimal digits, or 0x and hex digits; 0: none)", errBadRequest, v)
	}
	return id, nil
}

// leaseNotFound is the error for lease id, whatever the store's said: the
// ID in both forms, so the client finds the one it holds.
func leaseNotFound(id int64) error {
	return fmt.Errorf("%w: %d (0x%s)", store.ErrLeaseNotFound, id, LeaseIDHex(id))
}

// grantRequest is POST /v1/leases's body.
type grantRequest struct {
	TTL *int64 `json:"ttl"` // seconds; required
	ID  int64  `json:"id"`  // 0 or absent: the server picks one
}

func (s *Server) grantLease(w http.ResponseWriter, r *http.Request) error {
	if _, err := queryParams(r); err != nil {
		return err
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxLeaseBody))
	if err != nil {
		return fmt.Errorf("read request body: %w", err)
	}
	if len(b) == 0 {
		return fmt.Errorf(`%w: the body must be {"ttl": SECONDS}, with an optional "id"`, errBadRequest)
	}
	var req grantRequest
	if err := decodeStrict(b, &req); err != nil {
		return err
	}
	switch {
	case req.TTL == nil:
		return fmt.Errorf(`%w: "ttl" (seconds) is required`, errBadRequest)
	case *req.TTL < 0:
		return fmt.Errorf(`%w: "ttl" %d must not be negative (one below %d is raised to it)`, errBadRequest, *req.TTL, store.MinLeaseTTL)
	case req.ID < 0:
		return fmt.Errorf(`%w: "id" %d must be positive, or 0 to let the server pick one`, errBadRequest, req.ID)
	}
	l, err := s.cfg.Client.Store().Grant(r.Context(), *req.TTL, req.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, NewLease(l, false, false))
	return nil
}

// keepAliveLease renews a lease to its full TTL. An expired or unknown
// lease is no error: it answers TTL 0, as etcd's LeaseKeepAlive does.
func (s *Server) keepAliveLease(w http.ResponseWriter, r *http.Request) error {
	id, err := leaseParam(r)
	if err != nil {
		return err
	}
	if _, err := queryParams(r); err != nil {
		return err
	}
	ttl, err := s.cfg.Client.Store().KeepAlive(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, NewLease(store.Lease{ID: id, TTL: ttl}, false, false))
	return nil
}

// revokeLease deletes the lease's keys at one revision, then the lease.
func (s *Server) revokeLease(w http.ResponseWriter, r *http.Request) error {
	id, err := leaseParam(r)
	if err != nil {
		return err
	}
	if _, err := queryParams(r); err != nil {
		return err
	}
	res, err := s.cfg.Client.Store().Revoke(r.Context(), id)
	if errors.Is(err, store.ErrLeaseNotFound) {
		return leaseNotFound(id)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int64{"revision": res.Revision, "deleted": res.Deleted})
	return nil
}

func (s *Server) listLeases(w http.ResponseWriter, r *http.Request) error {
	if _, err := queryParams(r); err != nil {
		return err
	}
	ids, err := s.cfg.Client.Store().Leases(r.Context())
	if err != nil {
		return err
	}
	out := struct {
		Leases []LeaseRef `json:"leases"`
	}{make([]LeaseRef, len(ids))}
	for i, id := range ids {
		out.Leases[i] = LeaseRef{ID: id, IDHex: LeaseIDHex(id)}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// getLease answers a lease's granted TTL, the seconds it has left and, with
// ?keys=true, its keys; 404 when there is no such lease.
func (s *Server) getLease(w http.ResponseWriter, r *http.Request) error {
	id, err := leaseParam(r)
	if err != nil {
		return err
	}
	q, err := queryParams(r, "keys")
	if err != nil {
		return err
	}
	keys, err := q.boolean("keys")
	if err != nil {
		return err
	}
	l, ok, err := s.cfg.Client.TimeToLive(r.Context(), id, keys)
	if err != nil {
		return err
	}
	if !ok {
		return leaseNotFound(id)
	}
	writeJSON(w, http.StatusOK, NewLease(l, true, keys))
	return nil
}
