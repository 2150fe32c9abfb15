package etcdapi

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/store"
)

// maintenanceServer is etcd's Maintenance service. What etcd does to its
// bbolt file (defragment, snapshot, a hash of the whole file) is
// PostgreSQL's business here; what a client reads (status, alarms, the
// hash of the key space) is answered as etcd answers it.
type maintenanceServer struct {
	pb.UnimplementedMaintenanceServer
	s *Server
}

// Errors of the Maintenance methods walwatch does not serve.
var (
	errSnapshot = status.Error(codes.Unimplemented,
		"walwatch: snapshots are PostgreSQL's: back the database up with pg_dump (or pg_basebackup), not etcdctl snapshot save")
	errHash = status.Error(codes.Unimplemented,
		"walwatch: Hash hashes etcd's whole bbolt file, which walwatch does not have: use HashKV")
	errDowngrade = status.Error(codes.Unimplemented,
		"walwatch: there is no storage to downgrade: the etcd version walwatch reports is set with --etcd-emulated-version")
)

// hubStalled is the Status error reported while the hub is not reading its
// replication slot: reads and writes work, watches are delayed.
const hubStalled = "walwatch: the watch hub is reconnecting to PostgreSQL; watch events are delayed"

// Status answers as etcd's does for a one-member cluster whose leader is
// this member. RaftIndex is the current revision (the newest write
// committed) and RaftAppliedIndex the hub's watermark (every revision at or
// below it has gone out to watchers), so their difference is how far
// watchers lag. DbSize is what the walwatch tables take on disk, with their
// indexes and TOAST; DbSizeInUse leaves out the share of dead rows
// (compacted away, not yet vacuumed). DbSizeQuota is 0: PostgreSQL, not
// walwatch, bounds the size.
func (m *maintenanceServer) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	cur, _, err := m.s.cfg.Client.Store().Revision(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	size, inUse, err := m.s.dbSize(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.StatusResponse{
		Header:           m.s.header(cur),
		Version:          m.s.cfg.EmulatedVersion,
		DbSize:           size,
		DbSizeInUse:      inUse,
		Leader:           m.s.id.memberID,
		RaftIndex:        uint64(cur),
		RaftTerm:         m.s.id.raftTerm,
		RaftAppliedIndex: uint64(max(0, min(m.s.cfg.Client.Hub().Watermark(), cur))),
		IsLearner:        false,
		StorageVersion:   storageVersion(m.s.cfg.EmulatedVersion),
		DowngradeInfo:    &pb.DowngradeInfo{},
	}
	if !m.s.cfg.Client.Hub().Streaming() {
		resp.Errors = append(resp.Errors, hubStalled)
	}
	return resp, nil
}

// storageVersion is the storage version etcd of version v reports: its
// major and minor with patch 0 ("3.7.3" gives "3.7.0").
func storageVersion(v string) string {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return ""
	}
	return parts[0] + "." + parts[1] + ".0"
}

// dbSize returns the size of the walwatch schema's tables (with their
// indexes and TOAST) and an estimate of the part of it in use: each table's
// size times its share of live rows, from PostgreSQL's statistics. Neither
// is ever 0 (etcdctl divides by DbSizeInUse).
func (s *Server) dbSize(ctx context.Context) (size, inUse int64, err error) {
	err = s.cfg.Client.Store().Pool().QueryRow(ctx, `
		select coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint,
		       coalesce(sum(pg_total_relation_size(c.oid) *
		           case when coalesce(st.n_live_tup + st.n_dead_tup, 0) = 0 then 1
		                else st.n_live_tup::float8 / (st.n_live_tup + st.n_dead_tup) end), 0)::bigint
		from pg_class c
		join pg_namespace n on n.oid = c.relnamespace
		left join pg_stat_all_tables st on st.relid = c.oid
		where n.nspname = 'walwatch' and c.relkind in ('r', 'm')`).Scan(&size, &inUse)
	if err != nil {
		return 0, 0, fmt.Errorf("read the size of the walwatch tables: %w", store.TypedError(err, 0))
	}
	size = max(size, 1)
	return size, min(max(inUse, 1), size), nil
}

// Alarm answers that no alarm is raised, whatever the action: walwatch
// raises none (a full disk is PostgreSQL's to report), and activating one
// would have no effect.
func (m *maintenanceServer) Alarm(ctx context.Context, _ *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	cur, _, err := m.s.cfg.Client.Store().Revision(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &pb.AlarmResponse{Header: m.s.header(cur)}, nil
}

// Defragment succeeds without doing anything. PostgreSQL's autovacuum
// makes the space compaction frees reusable, as a defragmentation would;
// what would also give it back to the file system, VACUUM FULL, locks the
// table against every read and write, and every cp of the database, for as
// long as it rewrites it: not something a routine etcd defrag job may set
// off.
func (m *maintenanceServer) Defragment(context.Context, *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	m.s.log.Info("etcd defragment requested: nothing to do, PostgreSQL's autovacuum reclaims the space compaction frees")
	return &pb.DefragmentResponse{}, nil
}

// Snapshot is PostgreSQL's: pg_dump.
func (m *maintenanceServer) Snapshot(*pb.SnapshotRequest, grpc.ServerStreamingServer[pb.SnapshotResponse]) error {
	return errSnapshot
}

// Hash is etcd's hash of its whole bbolt file, meant for its tests.
func (m *maintenanceServer) Hash(context.Context, *pb.HashRequest) (*pb.HashResponse, error) {
	return nil, errHash
}

// MoveLeader answers as etcd does in a one-member cluster: moving the
// leadership to this member succeeds (it has it), to any other member fails.
func (m *maintenanceServer) MoveLeader(_ context.Context, req *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	if req.TargetID != m.s.id.memberID {
		return nil, rpctypes.ErrGRPCBadLeaderTransferee
	}
	return &pb.MoveLeaderResponse{}, nil
}

// Downgrade has nothing to downgrade.
func (m *maintenanceServer) Downgrade(context.Context, *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	return nil, errDowngrade
}

// hashSettleTimeout bounds how long HashKV waits for the revision it
// hashes to settle, as the client's reads do (walwatch.Config.SettleTimeout).
const hashSettleTimeout = 10 * time.Second

// HashKV is etcd's hash of the key space up to a revision (its HashByRev):
// CRC-32C of "key" followed by every row at or below the revision as etcd
// keeps it in bbolt, in revision order: the bbolt key (main and sub
// revision, big-endian, with a "t" for a tombstone) and the value (the
// mvccpb.KeyValue, only the key for a tombstone). Below the compacted
// revision only the rows a compaction at the hashed revision would keep
// count, as etcd's do, and a tombstone at the compacted revision is left
// out. walwatch's rows are etcd's rows (fillers aside, which are not
// hashed), so the same writes hash the same on both.
//
// One difference remains: etcd answers a HashKV at a revision it compacted
// at, while the process that compacted still runs, with the hash it took
// during that compaction (over the rows since the compaction before). A
// restarted etcd answers as this does.
func (m *maintenanceServer) HashKV(ctx context.Context, req *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	cur, compacted, err := m.s.cfg.Client.Store().Revision(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	rev := req.Revision
	switch {
	case rev > 0 && rev < compacted:
		return nil, rpctypes.ErrGRPCCompacted
	case rev > cur:
		return nil, rpctypes.ErrGRPCFutureRev
	case rev == 0:
		rev = cur
	}
	if rev > 0 {
		wctx, cancel := context.WithTimeout(ctx, hashSettleTimeout)
		err := m.s.cfg.Client.Hub().WaitFor(wctx, rev)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, toGRPC(ctx.Err())
			}
			return nil, toGRPC(fmt.Errorf("%w: hash at revision %d: %w", walwatch.ErrNotSettled, rev, err))
		}
	}
	sum, compacted, err := m.s.hashKV(ctx, rev)
	if err != nil {
		return nil, toGRPC(err)
	}
	if compacted == 0 {
		compacted = -1 // etcd's "never compacted"
	}
	return &pb.HashKVResponse{
		Header:          m.s.header(cur),
		Hash:            sum,
		CompactRevision: compacted,
		HashRevision:    rev,
	}, nil
}

// hashError says what failed, typed as the store types its errors.
func hashError(err error, rev int64) error {
	return fmt.Errorf("hash the key space at revision %d: %w", rev, store.TypedError(err, rev))
}

// hashKV computes etcd's HashByRev at rev over one snapshot of the table,
// and returns it with the compacted revision of that snapshot.
func (s *Server) hashKV(ctx context.Context, rev int64) (sum uint32, compacted int64, err error) {
	tx, err := s.cfg.Client.Store().Pool().BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, 0, hashError(err, rev)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read-only
	if err := tx.QueryRow(ctx, `select walwatch.compact_revision()`).Scan(&compacted); err != nil {
		return 0, 0, hashError(err, rev)
	}
	if rev > 0 && rev < compacted {
		return 0, 0, rpctypes.ErrGRPCCompacted // compacted since the check
	}
	// etcd's keep set: the newest row of each key at or below rev, unless
	// it is a tombstone. When it is empty (no key is live at rev), etcd
	// hashes every row below the compacted revision it still has, which
	// are the rows walwatch keeps there too.
	var anyLive bool
	if err := tx.QueryRow(ctx, `
		select exists (select 1 from walwatch.kv k
		                where k.revision <= $1 and k.key <> ''::bytea and not k.tombstone
		                  and not exists (select 1 from walwatch.kv n
		                                   where n.key = k.key and n.revision > k.revision and n.revision <= $1))`,
		rev).Scan(&anyLive); err != nil {
		return 0, 0, hashError(err, rev)
	}
	rows, err := tx.Query(ctx, `
		select k.revision, k.sub, k.key, k.value, k.tombstone, k.create_revision, k.version, k.lease,
		       k.revision > $2 or not exists (select 1 from walwatch.kv n
		                                       where n.key = k.key and n.revision > k.revision and n.revision <= $1)
		from walwatch.kv k
		where k.revision <= $1 and k.key <> ''::bytea
		order by k.revision, k.sub`, rev, compacted)
	if err != nil {
		return 0, 0, hashError(err, rev)
	}
	defer rows.Close()
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	h.Write([]byte("key")) // the name of etcd's bucket
	var (
		kv        mvccpb.KeyValue
		sub       int32
		tombstone bool
		newest    bool
		bkey      = make([]byte, 0, 18)
	)
	for rows.Next() {
		kv.Reset()
		if err := rows.Scan(&kv.ModRevision, &sub, &kv.Key, &kv.Value, &tombstone, &kv.CreateRevision, &kv.Version, &kv.Lease, &newest); err != nil {
			return 0, 0, hashError(err, rev)
		}
		main := kv.ModRevision
		if main <= compacted && anyLive && (!newest || tombstone) {
			continue // not in etcd's keep set
		}
		if main == compacted && tombstone {
			continue // etcd versions differ on keeping it, so none hashes it
		}
		bkey = binary.BigEndian.AppendUint64(bkey[:0], uint64(main))
		bkey = append(bkey, '_')
		bkey = binary.BigEndian.AppendUint64(bkey, uint64(sub))
		msg := &kv
		if tombstone {
			bkey = append(bkey, 't')
			msg = &mvccpb.KeyValue{Key: kv.Key}
		}
		v, err := proto.Marshal(msg)
		if err != nil {
			return 0, 0, fmt.Errorf("hash the key space: encode revision %d: %w", main, err)
		}
		h.Write(bkey)
		h.Write(v)
	}
	if err := rows.Err(); err != nil {
		return 0, 0, hashError(err, rev)
	}
	return h.Sum32(), compacted, nil
}
