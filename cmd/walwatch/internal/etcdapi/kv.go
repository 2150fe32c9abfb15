package etcdapi

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/walwatch/walwatch/store"
)

// kvServer is etcd's KV service on the walwatch client's store. Reads at
// the latest revision go through the client, so they answer at a revision
// below which everything is settled and visible: a watch from the next one
// misses nothing (Kubernetes lists, then watches from the list's revision).
type kvServer struct {
	pb.UnimplementedKVServer
	s *Server
	// lastWrite is the newest revision a write through this server
	// returned: a serializable read waits for it, so that, as on one etcd
	// member, a client reads its own writes.
	lastWrite atomic.Int64
}

// wrote records a write's revision and returns it.
func (k *kvServer) wrote(rev int64) int64 {
	for {
		last := k.lastWrite.Load()
		if rev <= last || k.lastWrite.CompareAndSwap(last, rev) {
			return rev
		}
	}
}

var _ pb.KVServer = (*kvServer)(nil)

// Range reads a key or range as etcd's Range does.
func (k *kvServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := checkRange(r); err != nil {
		return nil, err
	}
	normalizeRange(r)
	rev, err := k.readRevision(ctx, r)
	if err != nil {
		return nil, toGRPC(err)
	}
	res, err := k.s.cfg.Client.Range(ctx, storeRange(r, rev))
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := rangeResponse(r, res)
	resp.Header = k.s.header(headRevision(r, res))
	return resp, nil
}

// headRevision is the revision a read's header carries: the one read at
// when the request named none (the current one, or for a serializable read
// the one it was served at), else the current one, which the read found in
// its own snapshot.
func headRevision(r *pb.RangeRequest, res store.RangeResponse) int64 {
	if r.Revision == 0 {
		return res.Revision
	}
	return res.Current
}

// readRevision is the revision a Range reads at: the one it names, or for
// a serializable read the newest one the hub knows settled (no round trip
// for the newest), or this server's last write if newer; 0 leaves it to the
// client: the current revision, once settled.
func (k *kvServer) readRevision(ctx context.Context, r *pb.RangeRequest) (int64, error) {
	if r.Revision != 0 || !r.Serializable {
		return r.Revision, nil
	}
	rev, err := k.s.cfg.Client.ReadRevision(ctx)
	return max(rev, k.lastWrite.Load()), err
}

// normalizeRange reads a negative revision or limit as etcd does: the
// current revision, no limit.
func normalizeRange(r *pb.RangeRequest) {
	r.Revision = max(r.Revision, 0)
	r.Limit = max(r.Limit, 0)
}

// RangeStream sends a range in chunks, as etcd 3.7 does: each chunk a
// disjoint slice of the keys in order, all at one revision, the last with
// the header, more and count.
func (k *kvServer) RangeStream(r *pb.RangeRequest, stream grpc.ServerStreamingServer[pb.RangeStreamResponse]) error {
	if err := checkRange(r); err != nil {
		return err
	}
	if !defaultOrder(r) {
		return errRangeStreamSort
	}
	if hasRevisionFilters(r) {
		return errRangeStreamFilters
	}
	normalizeRange(r)
	ctx := stream.Context()
	rev, err := k.readRevision(ctx, r)
	if err != nil {
		return toGRPC(err)
	}
	if r.CountOnly {
		res, err := k.s.cfg.Client.Range(ctx, storeRange(r, rev))
		if err != nil {
			return toGRPC(err)
		}
		return stream.Send(&pb.RangeStreamResponse{RangeResponse: &pb.RangeResponse{Header: k.s.header(headRevision(r, res)), Count: res.Count}})
	}
	total := r.Limit
	if total == 0 {
		total = 1<<63 - 1
	}
	chunk := min(int64(initialStreamChunk), total)
	key, sent := r.Key, int64(0)
	for {
		req := storeRange(r, rev)
		req.Key, req.Limit = key, chunk
		res, err := k.s.cfg.Client.Range(ctx, req)
		if err != nil {
			return toGRPC(err)
		}
		rev = res.Revision // every chunk at the first one's revision
		out := rangeResponse(r, res)
		sent += int64(len(out.Kvs))
		done := !res.More || sent == total
		if done {
			out.Header, out.More, out.Count = k.s.header(headRevision(r, res)), res.More, sent
			if res.More {
				// What is left of the range after the last key sent.
				rest := storeRange(r, rev)
				rest.Key, rest.CountOnly = append(bytes.Clone(out.Kvs[len(out.Kvs)-1].Key), 0), true
				left, err := k.s.cfg.Client.Range(ctx, rest)
				if err != nil {
					return toGRPC(err)
				}
				out.Count += left.Count
			}
		} else {
			out.More, out.Count = false, 0
		}
		size := proto.Size(out)
		if err := stream.Send(&pb.RangeStreamResponse{RangeResponse: out}); err != nil {
			return err
		}
		if done {
			return nil
		}
		key = append(bytes.Clone(out.Kvs[len(out.Kvs)-1].Key), 0)
		// Aim each chunk at about the request limit in bytes.
		switch target := k.s.cfg.MaxRequestBytes; {
		case size < target/2:
			chunk *= 2
		case size > target*2:
			chunk = max(chunk/2, 1)
		}
		chunk = min(chunk, total-sent)
	}
}

// initialStreamChunk is the keys in RangeStream's first chunk, as etcd's.
const initialStreamChunk = 10

// Put sets a key as etcd's Put does.
func (k *kvServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := k.checkSize(r); err != nil {
		return nil, err
	}
	if err := checkPut(r); err != nil {
		return nil, err
	}
	if !r.PrevKv && !r.IgnoreValue && !r.IgnoreLease && r.Lease == 0 {
		// The common case goes through the batching put.
		res, err := k.s.cfg.Client.Put(ctx, r.Key, r.Value)
		if err != nil {
			return nil, toGRPC(err)
		}
		return &pb.PutResponse{Header: k.s.header(k.wrote(res.Revision))}, nil
	}
	res, err := k.s.cfg.Client.Txn(ctx, store.TxnRequest{Then: []store.Op{putOp(r)}})
	if err != nil {
		return nil, toGRPC(err)
	}
	put := res.Responses[0].Put
	return &pb.PutResponse{Header: k.s.header(k.wrote(res.Revision)), PrevKv: kvOf(put.PrevKV)}, nil
}

// DeleteRange deletes a key or range as etcd's DeleteRange does.
func (k *kvServer) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := k.checkSize(r); err != nil {
		return nil, err
	}
	if len(r.Key) == 0 {
		return nil, rpctypes.ErrGRPCEmptyKey
	}
	if !r.PrevKv {
		res, err := k.s.cfg.Client.Delete(ctx, keyRange(r.Key, r.RangeEnd))
		if err != nil {
			return nil, toGRPC(err)
		}
		return &pb.DeleteRangeResponse{Header: k.s.header(k.wrote(res.Revision)), Deleted: res.Deleted}, nil
	}
	res, err := k.s.cfg.Client.Txn(ctx, store.TxnRequest{Then: []store.Op{deleteOp(r)}})
	if err != nil {
		return nil, toGRPC(err)
	}
	return deleteResponse(k.s.header(k.wrote(res.Revision)), res.Responses[0].Delete), nil
}

// Txn runs a transaction as etcd's Txn does: every compare of the path
// taken is checked before any write, and all its writes share a revision.
func (k *kvServer) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := k.checkSize(r); err != nil {
		return nil, err
	}
	if err := checkTxn(r, k.s.cfg.Client.Store().Limits().MaxTxnOps); err != nil {
		return nil, err
	}
	res, err := k.s.cfg.Client.Txn(ctx, storeTxn(r))
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := txnResponse(r, res, res.Revision)
	resp.Header = k.s.header(k.wrote(res.Revision))
	return resp, nil
}

// Compact compacts at a revision. walwatch's compaction deletes the rows
// in the same transaction, so every compaction is physical: when it
// returns, the rows are gone.
func (k *kvServer) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	if r.Revision <= 0 {
		// etcd starts compacted below 0: compacting at 0 before any
		// compaction does nothing, anything else at or below 0 is compacted.
		cur, compacted, err := k.s.cfg.Client.Store().Revision(ctx)
		if err != nil {
			return nil, toGRPC(err)
		}
		if r.Revision < 0 || compacted > 0 {
			return nil, rpctypes.ErrGRPCCompacted
		}
		return &pb.CompactionResponse{Header: k.s.header(cur)}, nil
	}
	if _, err := k.s.cfg.Client.Compact(ctx, r.Revision); err != nil {
		return nil, toGRPC(err)
	}
	cur, _, err := k.s.cfg.Client.Store().Revision(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &pb.CompactionResponse{Header: k.s.header(cur)}, nil
}

// checkSize refuses a request over etcd's request limit, with etcd's error.
func (k *kvServer) checkSize(m proto.Message) error {
	if proto.Size(m) > k.s.cfg.MaxRequestBytes {
		return rpctypes.ErrGRPCRequestTooLarge
	}
	return nil
}

// Requests are checked as etcd checks them, before anything is read or
// written, with its errors.

func checkRange(r *pb.RangeRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

func checkPut(r *pb.PutRequest) error {
	switch {
	case len(r.Key) == 0:
		return rpctypes.ErrGRPCEmptyKey
	case r.IgnoreValue && len(r.Value) != 0:
		return rpctypes.ErrGRPCValueProvided
	case r.IgnoreLease && r.Lease != 0:
		return rpctypes.ErrGRPCLeaseProvided
	}
	return nil
}

// checkTxn applies etcd's limits: no part of a Txn longer than maxOps, a
// nested one within what its parent leaves, every compare with a key, every
// op with a request.
func checkTxn(r *pb.TxnRequest, maxOps int) error {
	n := max(len(r.Compare), len(r.Success), len(r.Failure))
	if n > maxOps {
		return rpctypes.ErrGRPCTooManyOps
	}
	for _, c := range r.Compare {
		if len(c.Key) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			var err error
			switch o := op.GetRequest().(type) {
			case *pb.RequestOp_RequestRange:
				err = checkRange(o.RequestRange)
			case *pb.RequestOp_RequestPut:
				err = checkPut(o.RequestPut)
			case *pb.RequestOp_RequestDeleteRange:
				if len(o.RequestDeleteRange.GetKey()) == 0 {
					err = rpctypes.ErrGRPCEmptyKey
				}
			case *pb.RequestOp_RequestTxn:
				err = checkTxn(o.RequestTxn, maxOps-n)
			default:
				err = rpctypes.ErrGRPCKeyNotFound
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// keyRange is etcd's key and range_end as a store range: the same rules
// ("" one key, "\x00" every key from key on).
func keyRange(key, end []byte) store.KeyRange { return store.KeyRange{Key: key, End: end} }

func defaultOrder(r *pb.RangeRequest) bool {
	return r.SortOrder == pb.RangeRequest_NONE ||
		r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND
}

func hasRevisionFilters(r *pb.RangeRequest) bool {
	return r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
}

// storeRange is what the store reads for r at rev: every key when r sorts
// or filters (its limit applies after, as in etcd), else at most r.Limit.
func storeRange(r *pb.RangeRequest, rev int64) store.RangeRequest {
	req := store.RangeRequest{KeyRange: keyRange(r.Key, r.RangeEnd), Revision: rev, Limit: r.Limit, CountOnly: r.CountOnly}
	if !defaultOrder(r) || hasRevisionFilters(r) {
		req.Limit = 0
	}
	return req
}

// rangeResponse shapes what the store read for r as etcd answers it:
// filtered by revision, sorted, cut to the limit, values dropped for
// keys_only. Count is the range's, before filters, as etcd's.
func rangeResponse(r *pb.RangeRequest, res store.RangeResponse) *pb.RangeResponse {
	kvs := res.KVs
	if hasRevisionFilters(r) {
		kvs = slices.DeleteFunc(slices.Clone(kvs), func(kv store.KeyValue) bool {
			return r.MaxModRevision != 0 && kv.ModRevision > r.MaxModRevision ||
				r.MinModRevision != 0 && kv.ModRevision < r.MinModRevision ||
				r.MaxCreateRevision != 0 && kv.CreateRevision > r.MaxCreateRevision ||
				r.MinCreateRevision != 0 && kv.CreateRevision < r.MinCreateRevision
		})
	}
	order := r.SortOrder
	if r.SortTarget != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND // sorting by a field means ascending unless told
	}
	if order != pb.RangeRequest_NONE && !(r.SortTarget == pb.RangeRequest_KEY && order == pb.RangeRequest_ASCEND) {
		kvs = slices.Clone(kvs)
		slices.SortStableFunc(kvs, func(a, b store.KeyValue) int {
			c := sortField(r.SortTarget, a, b)
			if order == pb.RangeRequest_DESCEND {
				return -c
			}
			return c
		})
	}
	resp := &pb.RangeResponse{More: res.More, Count: res.Count}
	if r.Limit > 0 && int64(len(kvs)) > r.Limit {
		kvs, resp.More = kvs[:r.Limit], true
	}
	resp.Kvs = make([]*mvccpb.KeyValue, len(kvs))
	for i := range kvs {
		resp.Kvs[i] = kvOf(&kvs[i])
		if r.KeysOnly {
			resp.Kvs[i].Value = nil
		}
	}
	return resp
}

func sortField(t pb.RangeRequest_SortTarget, a, b store.KeyValue) int {
	switch t {
	case pb.RangeRequest_VERSION:
		return cmp.Compare(a.Version, b.Version)
	case pb.RangeRequest_CREATE:
		return cmp.Compare(a.CreateRevision, b.CreateRevision)
	case pb.RangeRequest_MOD:
		return cmp.Compare(a.ModRevision, b.ModRevision)
	case pb.RangeRequest_VALUE:
		return bytes.Compare(a.Value, b.Value)
	}
	return bytes.Compare(a.Key, b.Key)
}

// kvOf is a store key-value as etcd's; nil stays nil.
func kvOf(kv *store.KeyValue) *mvccpb.KeyValue {
	if kv == nil {
		return nil
	}
	return &mvccpb.KeyValue{
		Key: kv.Key, Value: kv.Value, CreateRevision: kv.CreateRevision,
		ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease,
	}
}

func putOp(r *pb.PutRequest) store.Op {
	return store.Op{
		Kind: store.OpPut, Range: store.Key(r.Key), Value: r.Value, Lease: r.Lease,
		IgnoreValue: r.IgnoreValue, IgnoreLease: r.IgnoreLease, PrevKV: r.PrevKv,
	}
}

func deleteOp(r *pb.DeleteRangeRequest) store.Op {
	return store.Op{Kind: store.OpDelete, Range: keyRange(r.Key, r.RangeEnd), PrevKV: r.PrevKv}
}

func deleteResponse(h *pb.ResponseHeader, d *store.DeleteResponse) *pb.DeleteRangeResponse {
	resp := &pb.DeleteRangeResponse{Header: h, Deleted: d.Deleted}
	for i := range d.PrevKVs {
		resp.PrevKvs = append(resp.PrevKvs, kvOf(&d.PrevKVs[i]))
	}
	return resp
}

// storeTxn is r as the store's Txn, checked already by checkTxn.
func storeTxn(r *pb.TxnRequest) store.TxnRequest {
	var req store.TxnRequest
	for _, c := range r.Compare {
		if !knownCompare(c) {
			// etcd compares an unknown target as equal and lets an unknown
			// result hold: the compare is a constant.
			if c.Result == pb.Compare_NOT_EQUAL || c.Result == pb.Compare_LESS || c.Result == pb.Compare_GREATER {
				req.If = append(req.If, neverHolds(c.Key))
			}
			continue
		}
		sc := store.Compare{Key: c.Key, End: c.RangeEnd}
		switch c.Target {
		case pb.Compare_VALUE:
			sc.Target, sc.Value = store.CompareValue, c.GetValue()
		case pb.Compare_VERSION:
			sc.Target, sc.Number = store.CompareVersion, c.GetVersion()
		case pb.Compare_CREATE:
			sc.Target, sc.Number = store.CompareCreateRevision, c.GetCreateRevision()
		case pb.Compare_MOD:
			sc.Target, sc.Number = store.CompareModRevision, c.GetModRevision()
		case pb.Compare_LEASE:
			sc.Target, sc.Number = store.CompareLease, c.GetLease()
		}
		switch c.Result {
		case pb.Compare_EQUAL:
			sc.Result = store.ResultEqual
		case pb.Compare_NOT_EQUAL:
			sc.Result = store.ResultNotEqual
		case pb.Compare_LESS:
			sc.Result = store.ResultLess
		case pb.Compare_GREATER:
			sc.Result = store.ResultGreater
		}
		req.If = append(req.If, sc)
	}
	req.Then, req.Else = storeOps(r.Success), storeOps(r.Failure)
	return req
}

func knownCompare(c *pb.Compare) bool {
	_, target := pb.Compare_CompareTarget_name[int32(c.Target)]
	_, result := pb.Compare_CompareResult_name[int32(c.Result)]
	return target && result
}

// neverHolds is a compare on key that fails whatever the key holds: no
// version is below 0.
func neverHolds(key []byte) store.Compare {
	return store.Compare{Key: key, Target: store.CompareVersion, Result: store.ResultLess, Number: 0}
}

func storeOps(ops []*pb.RequestOp) []store.Op {
	out := make([]store.Op, 0, len(ops))
	for _, op := range ops {
		switch o := op.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			normalizeRange(o.RequestRange)
			rr := storeRange(o.RequestRange, o.RequestRange.Revision)
			out = append(out, store.Op{Kind: store.OpRange, Range: rr.KeyRange, Limit: rr.Limit, Revision: rr.Revision, CountOnly: rr.CountOnly})
		case *pb.RequestOp_RequestPut:
			out = append(out, putOp(o.RequestPut))
		case *pb.RequestOp_RequestDeleteRange:
			out = append(out, deleteOp(o.RequestDeleteRange))
		case *pb.RequestOp_RequestTxn:
			out = append(out, store.OpNested(storeTxn(o.RequestTxn)))
		}
	}
	return out
}

// txnResponse is the store's answer to r, a Txn at revision rev, as etcd's:
// ranges shaped by their requests, each op's header with its revision, as
// etcd's apply sets them (a range at an older revision reports the Txn's);
// a nested Txn's header is empty, as etcd's is.
func txnResponse(r *pb.TxnRequest, res store.TxnResponse, rev int64) *pb.TxnResponse {
	reqs := r.Success
	if !res.Succeeded {
		reqs = r.Failure
	}
	resp := &pb.TxnResponse{Succeeded: res.Succeeded, Header: &pb.ResponseHeader{}}
	for i, op := range res.Responses {
		var out pb.ResponseOp
		switch {
		case op.Range != nil:
			req := reqs[i].GetRequestRange()
			rr := rangeResponse(req, *op.Range)
			rr.Header = &pb.ResponseHeader{Revision: op.Range.Revision}
			if req.Revision != 0 {
				rr.Header.Revision = rev
			}
			out.Response = &pb.ResponseOp_ResponseRange{ResponseRange: rr}
		case op.Put != nil:
			out.Response = &pb.ResponseOp_ResponsePut{ResponsePut: &pb.PutResponse{
				Header: &pb.ResponseHeader{Revision: op.Put.Revision}, PrevKv: kvOf(op.Put.PrevKV),
			}}
		case op.Delete != nil:
			out.Response = &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: deleteResponse(
				&pb.ResponseHeader{Revision: op.Delete.Revision}, op.Delete)}
		case op.Txn != nil:
			out.Response = &pb.ResponseOp_ResponseTxn{ResponseTxn: txnResponse(reqs[i].GetRequestTxn(), *op.Txn, rev)}
		}
		resp.Responses = append(resp.Responses, &out)
	}
	return resp
}
