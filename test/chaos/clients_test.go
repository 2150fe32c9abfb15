package chaos

import (
	"bytes"
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

	"github.com/jackc/pgx/v5/pgconn"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/chaos/check"
	"github.com/walwatch/walwatch/wire"
)

// The key space is small, so that clients collide: two prefixes of eight
// keys. No key is a prefix of another, so an HTTP read of one key with
// ?prefix=true (which answers an absent key with a revision, where a plain
// read answers 404) reads that key alone.
var (
	prefixes = []string{"/c/a/", "/c/b/"}
	allKeys  = func() []string {
		var ks []string
		for _, p := range prefixes {
			for i := range 8 {
				ks = append(ks, fmt.Sprintf("%sk%02d", p, i))
			}
		}
		return ks
	}()
)

// prefixEnd is etcd's end of the range of keys starting with p.
func prefixEnd(p string) string { return string(store.PrefixEnd([]byte(p))) }

// run is what every client and watcher of a history shares.
type run struct {
	e   *env
	rec *recorder

	maxRev    atomic.Int64 // the highest revision any answer carried
	compacted atomic.Int64 // the highest compacted revision seen
}

func (r *run) sawRevision(rev int64) {
	for {
		cur := r.maxRev.Load()
		if rev <= cur || r.maxRev.CompareAndSwap(cur, rev) {
			return
		}
	}
}

func (r *run) sawCompacted(rev int64) {
	for {
		cur := r.compacted.Load()
		if rev <= cur || r.compacted.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// refused is an error that says the operation certainly did not happen.
type refused struct {
	compacted int64 // the compacted revision, when the answer carried one
	err       error
}

func (e *refused) Error() string { return e.err.Error() }
func (e *refused) Unwrap() error { return e.err }

// client issues one operation at a time, through any of the APIs.
type client struct {
	id  int
	r   *run
	rnd *rand.Rand
	seq int
	// seen is the last state of each key this client saw, to compare
	// against in a Txn: a compare that holds now and then.
	seen map[string]check.KV
}

func newClient(id int, r *run, seed int64) *client {
	return &client{id: id, r: r, rnd: rand.New(rand.NewPCG(uint64(seed), uint64(id)+1)), seen: make(map[string]check.KV)}
}

// loop issues operations until traffic ends.
func (c *client) loop(traffic context.Context) {
	for traffic.Err() == nil {
		// A pace, not a wait for a result: it keeps histories small
		// enough for the linearizability check.
		pause := time.Duration(10+c.rnd.IntN(30)) * time.Millisecond
		if c.step() == check.Unknown {
			// Something is down: do not pile up operations that may or
			// may not happen.
			pause = time.Duration(50+c.rnd.IntN(150)) * time.Millisecond
		}
		select {
		case <-traffic.Done():
		case <-time.After(pause):
		}
	}
}

// step issues one random operation and records it.
func (c *client) step() check.Status {
	p := c.rnd.IntN(100)
	if p < 5 && c.r.rec.readCount() > 0 {
		c.reread(c.pick("etcd", "http", "sql"))
		return check.OK
	}
	via := c.pick("etcd", "etcd", "http", "http", "sql")
	op := check.Op{Client: c.id, Via: via}
	switch p = c.rnd.IntN(100); {
	case p < 35:
		op.Kind, op.Key, op.Value = check.Put, c.key(), c.value()
	case p < 55:
		op.Kind = check.Get
		op.Key, op.End = c.keyOrRange()
	case p < 65:
		op.Kind, op.Revision = check.Get, c.oldRevision()
		op.Key, op.End = c.keyOrRange()
	case p < 73:
		op.Kind, op.Key = check.Delete, c.key()
	case p < 77:
		op.Kind = check.DeleteRange
		op.Key, op.End = c.deleteRange(via)
	case p < 98 || p == 99 && c.rnd.IntN(3) > 0:
		op.Via, op.Kind, op.Key, op.Value = "etcd", check.Txn, c.key(), c.value()
		if kv, ok := c.seen[op.Key]; ok && c.rnd.IntN(4) > 0 {
			op.CmpModRevision = kv.ModRevision
			if c.rnd.IntN(2) == 0 {
				v := kv.Value
				op.CmpValue = &v
			}
		}
	default:
		op.Kind, op.Revision = check.Compact, c.compactRevision()
	}
	op = c.do(op)
	c.r.rec.op(op)
	return op.Status
}

func (c *client) pick(vias ...string) string { return vias[c.rnd.IntN(len(vias))] }

func (c *client) key() string { return allKeys[c.rnd.IntN(len(allKeys))] }

// value is unique in the history.
func (c *client) value() string {
	c.seq++
	return fmt.Sprintf("c%d-%d", c.id, c.seq)
}

// keyOrRange is one key, or a prefix (End is its end).
func (c *client) keyOrRange() (key, end string) {
	switch c.rnd.IntN(4) {
	case 0:
		return prefixes[0], prefixEnd(prefixes[0])
	case 1:
		return "/c/", prefixEnd("/c/")
	default:
		return c.key(), ""
	}
}

// deleteRange is a prefix, or through etcd and SQL any range of keys.
func (c *client) deleteRange(via string) (key, end string) {
	if via == "http" || c.rnd.IntN(2) == 0 {
		p := prefixes[c.rnd.IntN(len(prefixes))]
		return p, prefixEnd(p)
	}
	i := c.rnd.IntN(len(allKeys) - 1)
	j := i + 1 + c.rnd.IntN(min(4, len(allKeys)-i-1))
	end = prefixEnd(allKeys[len(allKeys)-1])
	if j < len(allKeys) {
		end = allKeys[j]
	}
	return allKeys[i], end
}

// oldRevision is a revision below the newest seen; now and then one
// already compacted or one in the future.
func (c *client) oldRevision() int64 {
	top, low := c.r.maxRev.Load(), c.r.compacted.Load()
	switch p := c.rnd.IntN(20); {
	case p == 0:
		return top + 1000 // refused: future
	case p == 1 && low > 1:
		return 1 + c.rnd.Int64N(low) // refused: compacted, unless it is the compacted revision
	}
	low = max(low, 1)
	if top <= low {
		return max(top, 1)
	}
	return low + c.rnd.Int64N(top-low+1)
}

// compactRevision keeps some history: compaction to a revision a little
// behind the newest seen.
func (c *client) compactRevision() int64 {
	return max(1, c.r.maxRev.Load()-int64(20+c.rnd.IntN(200)))
}

// do runs op through its API and records when it was called, when it
// returned and what it answered.
func (c *client) do(op check.Op) check.Op {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	op.Call = c.r.rec.now()
	var err error
	switch op.Via {
	case "etcd":
		err = c.etcd(ctx, &op)
	case "http":
		err = c.http(ctx, &op)
	case "sql":
		err = c.sql(ctx, &op)
	}
	op.Return = c.r.rec.now()
	var rf *refused
	switch {
	case err == nil:
		op.Status = check.OK
		c.r.sawRevision(op.Header)
		c.learn(op)
	case errors.As(err, &rf):
		op.Status, op.Err = check.Failed, err.Error()
		if op.Kind == check.Get {
			op.Compacted = rf.compacted
		}
		c.r.sawCompacted(rf.compacted)
	default:
		op.Status, op.Err = check.Unknown, err.Error()
		op.KVs, op.Header, op.Deleted, op.Succeeded = nil, 0, 0, false
	}
	return op
}

// learn remembers what an answered operation showed of its keys, and now
// and then keeps a read at latest as a read to ask again later.
func (c *client) learn(op check.Op) {
	switch op.Kind {
	case check.Get:
		if op.End == "" && op.Revision == 0 {
			delete(c.seen, op.Key)
		}
		for _, kv := range op.KVs {
			c.seen[kv.Key] = kv
		}
		if op.Revision == 0 && c.rnd.IntN(8) == 0 {
			c.r.rec.addRead(check.Read{Key: op.Key, End: op.End, Revision: op.Header,
				Answers: []check.ReadAnswer{{At: op.Return, KVs: op.KVs}}})
		}
	case check.Put:
		c.seen[op.Key] = check.KV{Key: op.Key, Value: op.Value, ModRevision: op.Header}
	case check.Txn:
		if op.Succeeded {
			c.seen[op.Key] = check.KV{Key: op.Key, Value: op.Value, ModRevision: op.Header}
		} else if len(op.KVs) == 1 {
			c.seen[op.Key] = op.KVs[0]
		} else {
			delete(c.seen, op.Key)
		}
	case check.Compact:
		c.r.sawCompacted(op.Revision)
	}
}

// reread asks a read at a fixed revision again, through via.
func (c *client) reread(via string) {
	rd, idx, ok := c.r.rec.readAt(c.rnd.IntN(maxReads))
	if !ok {
		return
	}
	c.r.rec.answer(idx, c.readAgain(via, rd))
}

// readAgain answers rd again through via.
func (c *client) readAgain(via string, rd check.Read) check.ReadAnswer {
	op := c.do(check.Op{Client: c.id, Via: via, Kind: check.Get, Key: rd.Key, End: rd.End, Revision: rd.Revision})
	a := check.ReadAnswer{At: op.Return, KVs: op.KVs, Compacted: op.Compacted}
	if op.Status != check.OK && op.Compacted == 0 {
		a.Err = op.Err
	}
	return a
}

// ---- etcd ----

func (c *client) etcd(ctx context.Context, op *check.Op) error {
	cli := c.r.e.etcd
	var opts []clientv3.OpOption
	if op.End != "" {
		opts = append(opts, clientv3.WithRange(op.End))
	}
	switch op.Kind {
	case check.Get:
		if op.Revision > 0 {
			opts = append(opts, clientv3.WithRev(op.Revision))
		}
		resp, err := cli.Get(ctx, op.Key, opts...)
		if err != nil {
			return etcdError(err)
		}
		op.Header, op.KVs = resp.Header.Revision, etcdKVs(resp.Kvs)
	case check.Put:
		resp, err := cli.Put(ctx, op.Key, op.Value)
		if err != nil {
			return etcdError(err)
		}
		op.Header = resp.Header.Revision
	case check.Delete, check.DeleteRange:
		resp, err := cli.Delete(ctx, op.Key, opts...)
		if err != nil {
			return etcdError(err)
		}
		op.Header, op.Deleted = resp.Header.Revision, resp.Deleted
	case check.Txn:
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(op.Key), "=", op.CmpModRevision)}
		if op.CmpValue != nil {
			cmps = append(cmps, clientv3.Compare(clientv3.Value(op.Key), "=", *op.CmpValue))
		}
		resp, err := cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(op.Key, op.Value)).Else(clientv3.OpGet(op.Key)).Commit()
		if err != nil {
			return etcdError(err)
		}
		op.Header, op.Succeeded = resp.Header.Revision, resp.Succeeded
		if !resp.Succeeded && len(resp.Responses) == 1 {
			op.KVs = etcdKVs(resp.Responses[0].GetResponseRange().GetKvs())
		}
	case check.Compact:
		resp, err := cli.Compact(ctx, op.Revision)
		if err != nil {
			return etcdError(err)
		}
		op.Header = resp.Header.Revision
	}
	return nil
}

// etcdError marks the errors that say an operation did not happen. etcd's
// compacted error carries no revision.
func etcdError(err error) error {
	if errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, rpctypes.ErrFutureRev) {
		return &refused{err: err}
	}
	return err
}

func etcdKVs(kvs []*mvccpb.KeyValue) []check.KV {
	var out []check.KV
	for _, kv := range kvs {
		out = append(out, check.KV{Key: string(kv.Key), Value: string(kv.Value), CreateRevision: kv.CreateRevision,
			ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease})
	}
	return out
}

// ---- HTTP ----

func (c *client) http(ctx context.Context, op *check.Op) error {
	base := "http://" + c.r.e.cp.httpAddr
	q := url.Values{}
	switch op.Kind {
	case check.Get:
		// Always a prefix read: see allKeys. The record says so.
		if op.End == "" {
			op.End = prefixEnd(op.Key)
		}
		q.Set("prefix", "true")
		if op.Revision > 0 {
			q.Set("rev", strconv.FormatInt(op.Revision, 10))
		}
		var out struct {
			Revision int64     `json:"revision"`
			KVs      []wire.KV `json:"kvs"`
		}
		if err := c.httpCall(ctx, http.MethodGet, base+"/v1/kv"+op.Key+"?"+q.Encode(), nil, &out); err != nil {
			return err
		}
		op.Header = out.Revision
		for _, kv := range out.KVs {
			op.KVs = append(op.KVs, check.KV{Key: kv.Key, Value: kv.Value, CreateRevision: kv.CreateRevision,
				ModRevision: kv.ModRevision, Version: kv.Version})
		}
	case check.Put:
		var out struct {
			Revision int64 `json:"revision"`
		}
		if err := c.httpCall(ctx, http.MethodPut, base+"/v1/kv"+op.Key, []byte(op.Value), &out); err != nil {
			return err
		}
		op.Header = out.Revision
	case check.Delete, check.DeleteRange:
		u := base + "/v1/kv" + op.Key
		if op.Kind == check.DeleteRange {
			u += "?prefix=true" // op.End is the prefix's end: see deleteRange
		}
		var out struct {
			Revision int64 `json:"revision"`
			Deleted  int64 `json:"deleted"`
		}
		if err := c.httpCall(ctx, http.MethodDelete, u, nil, &out); err != nil {
			return err
		}
		op.Header, op.Deleted = out.Revision, out.Deleted
	case check.Compact:
		body, _ := json.Marshal(map[string]int64{"revision": op.Revision})
		var out struct {
			CompactRevision int64 `json:"compact_revision"`
		}
		if err := c.httpCall(ctx, http.MethodPost, base+"/v1/compact", body, &out); err != nil {
			return err
		}
		// The answer carries no header; the compaction's own revision
		// stands for it.
		op.Header = out.CompactRevision
	default:
		return fmt.Errorf("%v through HTTP: not supported", op.Kind)
	}
	return nil
}

// httpCall does one request and decodes a 200's JSON into out. 410
// (compacted) and 400 future_revision are refusals; anything else that is
// not a 200 may or may not have happened.
func (c *client) httpCall(ctx context.Context, method, u string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	resp, err := c.r.e.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, u, err)
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decoding %q: %w", method, u, b, err)
		}
		return nil
	}
	var apiErr struct {
		Code            string `json:"code"`
		CompactRevision int64  `json:"compact_revision"`
	}
	_ = json.Unmarshal(b, &apiErr)
	err = fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, strings.TrimSpace(string(b)))
	switch {
	case resp.StatusCode == http.StatusGone && apiErr.Code == "compacted":
		return &refused{compacted: apiErr.CompactRevision, err: err}
	case resp.StatusCode == http.StatusBadRequest && apiErr.Code == "future_revision":
		return &refused{err: err}
	}
	return err
}

// ---- SQL ----

func (c *client) sql(ctx context.Context, op *check.Op) error {
	db := c.r.e.sql
	var end []byte // NULL: one key
	if op.End != "" {
		end = []byte(op.End)
	}
	switch op.Kind {
	case check.Get:
		return sqlError(c.sqlGet(ctx, op, end))
	case check.Put:
		return sqlError(db.QueryRow(ctx, `select walwatch.put($1, $2)`, []byte(op.Key), []byte(op.Value)).Scan(&op.Header))
	case check.Delete, check.DeleteRange:
		return sqlError(db.QueryRow(ctx, `select revision, deleted from walwatch.delete_range($1, $2)`, []byte(op.Key), end).
			Scan(&op.Header, &op.Deleted))
	case check.Compact:
		var removed int64
		if err := db.QueryRow(ctx, `select compact_revision, removed from walwatch.compact($1)`, op.Revision).Scan(&op.Header, &removed); err != nil {
			return sqlError(err)
		}
		// As over HTTP: the compaction's revision stands for a header.
	default:
		return fmt.Errorf("%v through SQL: not supported", op.Kind)
	}
	return nil
}

// sqlGet reads at op.Revision (0: the current revision), as a client of
// plain SQL must to read what a watch will follow: first settle every
// revision at or below it (walwatch.settle_below fills the holes no
// transaction holds and waits for those one does), then read it in a new
// statement, whose snapshot sees them all.
func (c *client) sqlGet(ctx context.Context, op *check.Op, end []byte) error {
	db := c.r.e.sql
	rev := op.Revision
	if rev == 0 {
		if err := db.QueryRow(ctx, `select walwatch.current_revision()`).Scan(&rev); err != nil {
			return err
		}
	}
	if _, err := db.Exec(ctx, `select walwatch.settle_below($1 + 1)`, rev); err != nil {
		return err
	}
	var (
		keys, vals          [][]byte
		creates, mods, vers []int64
		leases              []int64
	)
	if err := db.QueryRow(ctx, `select revision, keys, vals, create_revisions, mod_revisions, versions, leases
		from walwatch.range($1, $2, $3)`, []byte(op.Key), end, rev).
		Scan(&op.Header, &keys, &vals, &creates, &mods, &vers, &leases); err != nil {
		return err
	}
	for i := range keys {
		op.KVs = append(op.KVs, check.KV{Key: string(keys[i]), Value: string(vals[i]), CreateRevision: creates[i],
			ModRevision: mods[i], Version: vers[i], Lease: leases[i]})
	}
	return nil
}

// sqlError marks walwatch's refusals (compacted, future revision).
func sqlError(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case "WWC01":
		n, _ := strconv.ParseInt(pe.Detail, 10, 64)
		return &refused{compacted: n, err: err}
	case "WWF01":
		return &refused{err: err}
	}
	return err
}
