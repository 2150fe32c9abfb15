package etcdapi

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// identity is who this server says it is in etcd's terms. etcd's cluster is
// walwatch's database, so the cluster ID derives from the PostgreSQL
// cluster's system identifier and the database's OID: stable for a
// database, the same for every cp that serves it, and different for a
// database restored elsewhere (a new initdb has a new identifier). The
// member ID adds the member's name and client URLs, so each cp of a
// database has its own, stable across its restarts, even where several
// hosts serve on the same loopback URL (each its own host name).
type identity struct {
	clusterID uint64
	memberID  uint64
	// raftTerm is etcd's leader term. walwatch has no Raft; PostgreSQL's
	// timeline ID plays its part: 1 from initdb, raised by each promotion
	// of a standby, as a term is by each new leader.
	raftTerm uint64
}

func readIdentity(ctx context.Context, pool *pgxpool.Pool, name string, clientURLs []string) (identity, error) {
	var (
		system   string
		dbOID    uint32
		timeline int64
	)
	// Where an administrator revoked EXECUTE on pg_control_system or
	// pg_control_checkpoint, the database's name and the server's address
	// stand in for the system identifier.
	err := pool.QueryRow(ctx, `select (select system_identifier::text from pg_control_system()),
		(select oid from pg_database where datname = current_database()),
		(select timeline_id from pg_control_checkpoint())`).Scan(&system, &dbOID, &timeline)
	if err != nil {
		if err := pool.QueryRow(ctx, `select current_database() || '@' || coalesce(host(inet_server_addr()), 'local') || ':' ||
			coalesce(inet_server_port()::text, ''), (select oid from pg_database where datname = current_database())`).Scan(&system, &dbOID); err != nil {
			return identity{}, fmt.Errorf("read the database's identity: %w", err)
		}
		timeline = 1
	}
	cluster := hash64(system, fmt.Sprint(dbOID))
	return identity{
		clusterID: cluster,
		memberID:  hash64(fmt.Sprint(cluster), name, strings.Join(clientURLs, ",")),
		raftTerm:  uint64(max(timeline, 1)),
	}, nil
}

// hash64 is the first 8 bytes of the SHA-256 of parts, never 0 (etcd's
// "no member").
func hash64(parts ...string) uint64 {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	if v := binary.BigEndian.Uint64(sum[:8]); v != 0 {
		return v
	}
	return 1
}

// header returns a response header at rev, the current revision.
func (s *Server) header(rev int64) *pb.ResponseHeader {
	return &pb.ResponseHeader{
		ClusterId: s.id.clusterID,
		MemberId:  s.id.memberID,
		Revision:  rev,
		RaftTerm:  s.id.raftTerm,
	}
}
