package etcdapi

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/store"
)

func TestStatus(t *testing.T) {
	e := newEnv(t)
	if _, err := e.client.Put(callCtx(t), []byte("/status/a"), []byte(strings.Repeat("x", 10000))); err != nil {
		t.Fatal(err)
	}
	cur, _, err := e.client.Store().Revision(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.etcd.Status(callCtx(t), e.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	h := st.Header
	checks := []struct {
		what string
		ok   bool
	}{
		{"version is the emulated one", st.Version == DefaultEmulatedVersion},
		{"storage version is its major.minor.0", st.StorageVersion == "3.7.0"},
		{"dbSize > 0", st.DbSize > 0},
		{"0 < dbSizeInUse <= dbSize", st.DbSizeInUse > 0 && st.DbSizeInUse <= st.DbSize},
		{"leader is this member", st.Leader == h.MemberId && h.MemberId != 0},
		{"cluster ID set", h.ClusterId != 0},
		{"header at the current revision", h.Revision == cur},
		{"raft term >= 1", st.RaftTerm >= 1 && h.RaftTerm == st.RaftTerm},
		{"raft index is the current revision", st.RaftIndex == uint64(cur)},
		{"applied index at most the raft index", st.RaftAppliedIndex <= st.RaftIndex},
		{"not a learner", !st.IsLearner},
		{"no errors", len(st.Errors) == 0},
		{"downgrade info, not enabled", st.DowngradeInfo != nil && !st.DowngradeInfo.Enabled},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("Status: %s: got %+v", c.what, st)
		}
	}

	// The version clients switch features on is the one configured.
	e2 := startServer(t, e.client, func(c *Config) { c.EmulatedVersion = "3.6.5" })
	st, err = e2.etcd.Status(callCtx(t), e2.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "3.6.5" || st.StorageVersion != "3.6.0" {
		t.Errorf("emulating 3.6.5: version %q, storage version %q", st.Version, st.StorageVersion)
	}
}

// The cluster ID is the database's: the same for every server on it and
// across restarts, another for another database. The member ID is the
// server's, by its name and client URLs: stable across its restarts.
func TestIdentity(t *testing.T) {
	a := newEnv(t)
	urls := func(u ...string) func(*Config) { return func(c *Config) { c.ClientURLs = u } }
	header := func(e *env) *pb.ResponseHeader {
		t.Helper()
		st, err := e.etcd.Status(callCtx(t), e.endpoint)
		if err != nil {
			t.Fatal(err)
		}
		return st.Header
	}
	one := header(startServer(t, a.client, urls("https://cp-1.example:2379")))
	again := header(startServer(t, a.client, urls("https://cp-1.example:2379")))
	other := header(startServer(t, a.client, urls("https://cp-2.example:2379")))
	otherHost := header(startServer(t, a.client, urls("https://cp-1.example:2379"), func(c *Config) { c.Name = "host-2" }))
	elsewhere := header(newEnv(t, urls("https://cp-1.example:2379")))
	if one.ClusterId != again.ClusterId || one.ClusterId != other.ClusterId || one.ClusterId != header(a).ClusterId {
		t.Errorf("cluster IDs on one database differ: %x %x %x", one.ClusterId, again.ClusterId, other.ClusterId)
	}
	if one.MemberId != again.MemberId {
		t.Errorf("member ID changed across a restart with the same URLs: %x, %x", one.MemberId, again.MemberId)
	}
	if one.MemberId == other.MemberId || one.MemberId == otherHost.MemberId {
		t.Errorf("members with different URLs or names share member ID %x: %x, %x", one.MemberId, other.MemberId, otherHost.MemberId)
	}
	if elsewhere.ClusterId == one.ClusterId {
		t.Errorf("another database has the same cluster ID %x", one.ClusterId)
	}
}

func TestAlarm(t *testing.T) {
	e := newEnv(t)
	cur, _, err := e.client.Store().Revision(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	list, err := e.etcd.AlarmList(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Alarms) != 0 || list.Header.Revision != cur || list.Header.MemberId == 0 {
		t.Errorf("AlarmList: %+v, want no alarms at revision %d", list, cur)
	}
	// No action raises or leaves an alarm.
	maint := pb.NewMaintenanceClient(e.etcd.ActiveConnection())
	for _, action := range []pb.AlarmRequest_AlarmAction{pb.AlarmRequest_GET, pb.AlarmRequest_ACTIVATE, pb.AlarmRequest_DEACTIVATE} {
		resp, err := maint.Alarm(callCtx(t), &pb.AlarmRequest{Action: action, MemberID: list.Header.MemberId, Alarm: pb.AlarmType_NOSPACE})
		if err != nil || len(resp.Alarms) != 0 {
			t.Errorf("Alarm %v: %+v, %v; want no alarms", action, resp, err)
		}
	}
	if _, err := e.etcd.AlarmDisarm(callCtx(t), &clientv3.AlarmMember{MemberID: list.Header.MemberId, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Errorf("AlarmDisarm: %v", err)
	}
}

func TestDefragment(t *testing.T) {
	e := newEnv(t)
	if _, err := e.etcd.Defragment(callCtx(t), e.endpoint); err != nil {
		t.Fatalf("Defragment: %v", err)
	}
}

func TestMoveLeader(t *testing.T) {
	e := newEnv(t)
	st, err := e.etcd.Status(callCtx(t), e.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.etcd.MoveLeader(callCtx(t), st.Leader); err != nil {
		t.Errorf("MoveLeader to the leader itself: %v, want success, as etcd answers", err)
	}
	if _, err := e.etcd.MoveLeader(callCtx(t), st.Leader+1); !errors.Is(err, rpctypes.ErrBadLeaderTransferee) {
		t.Errorf("MoveLeader to another member: %v, want %v", err, rpctypes.ErrBadLeaderTransferee)
	}
}

// What walwatch leaves to PostgreSQL or does not have answers
// Unimplemented, saying why.
func TestMaintenanceUnimplemented(t *testing.T) {
	e := newEnv(t)
	maint := pb.NewMaintenanceClient(e.etcd.ActiveConnection())
	snapshot := func() error {
		rc, err := e.etcd.Snapshot(callCtx(t))
		if err != nil {
			return err
		}
		defer rc.Close()
		_, err = io.ReadAll(rc)
		return err
	}
	rawSnapshot := func() error {
		s, err := maint.Snapshot(callCtx(t), &pb.SnapshotRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	for _, c := range []struct {
		name, want string
		call       func() error
	}{
		{"Snapshot", "pg_dump", snapshot},
		{"Snapshot (raw)", "pg_dump", rawSnapshot},
		{"Hash", "HashKV", func() error { _, err := maint.Hash(callCtx(t), &pb.HashRequest{}); return err }},
		{"Downgrade", "--etcd-emulated-version", func() error {
			_, err := e.etcd.Downgrade(callCtx(t), clientv3.DowngradeValidate, "3.6.0")
			return err
		}},
	} {
		err := c.call()
		if !strings.Contains(errorDesc(err), c.want) {
			t.Errorf("%s: %v, want Unimplemented mentioning %q", c.name, err, c.want)
		}
		if c.name != "Snapshot" && status.Code(err) != codes.Unimplemented { // clientv3's snapshot reader keeps only the message
			t.Errorf("%s: code %v, want Unimplemented", c.name, status.Code(err))
		}
	}
}

// errorDesc is an error's message, or its status's, or "".
func errorDesc(err error) string {
	if err == nil {
		return ""
	}
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}

// TestHashKVMatchesEtcd runs the writes below and compares HashKV with what
// etcd v3.7.3 answered after the same writes, restarted after each
// compaction (a running etcd answers at a revision it has just compacted at
// with the hash it took while compacting).
func TestHashKVMatchesEtcd(t *testing.T) {
	e := newEnv(t)
	c := e.client
	ctx := callCtx(t)
	ops := []func() (int64, error){
		func() (int64, error) { r, err := c.Put(ctx, []byte("/a"), []byte("1")); return r.Revision, err },
		func() (int64, error) { r, err := c.Put(ctx, []byte("/b"), []byte("2")); return r.Revision, err },
		func() (int64, error) { r, err := c.Put(ctx, []byte("/a"), []byte("3")); return r.Revision, err },
		func() (int64, error) { r, err := c.Delete(ctx, store.Key([]byte("/b"))); return r.Revision, err },
		func() (int64, error) {
			r, err := c.Txn(ctx, store.TxnRequest{Then: []store.Op{
				store.OpPutKey([]byte("/c"), []byte("4")), store.OpPutKey([]byte("/d"), []byte("5")),
				store.OpDeleteRange(store.Key([]byte("/a"))),
			}})
			return r.Revision, err
		},
		func() (int64, error) { r, err := c.Put(ctx, []byte("/b"), []byte("6")); return r.Revision, err },
		func() (int64, error) { r, err := c.Delete(ctx, store.Prefix([]byte("/"))); return r.Revision, err },
		func() (int64, error) { r, err := c.Put(ctx, []byte("/e"), []byte("7")); return r.Revision, err },
		func() (int64, error) { r, err := c.Put(ctx, []byte("/e"), []byte("8")); return r.Revision, err },
	}
	for i, op := range ops {
		rev, err := op()
		if err != nil {
			t.Fatal(err)
		}
		if rev != int64(i+2) {
			t.Fatalf("write %d took revision %d, want %d (the golden hashes assume etcd's)", i, rev, i+2)
		}
	}
	type want struct {
		rev, hashRev     int64
		hash             uint32
		compact, headRev int64
	}
	check := func(phase string, wants []want) {
		t.Helper()
		for _, w := range wants {
			h, err := e.etcd.HashKV(callCtx(t), e.endpoint, w.rev)
			if err != nil {
				t.Errorf("%s: HashKV(%d): %v", phase, w.rev, err)
				continue
			}
			if h.Hash != w.hash || h.CompactRevision != w.compact || h.HashRevision != w.hashRev || h.Header.Revision != w.headRev {
				t.Errorf("%s: HashKV(%d) = hash %d, compact %d, hash revision %d, header revision %d; etcd: %d, %d, %d, %d",
					phase, w.rev, h.Hash, h.CompactRevision, h.HashRevision, h.Header.Revision, w.hash, w.compact, w.hashRev, w.headRev)
			}
		}
	}
	compact := func(rev int64) {
		t.Helper()
		if _, err := e.etcd.Compact(callCtx(t), rev, clientv3.WithCompactPhysical()); err != nil {
			t.Fatal(err)
		}
	}
	check("no compaction", []want{
		{0, 10, 3050183640, -1, 10}, {1, 1, 1084519789, -1, 10}, {2, 2, 2150085451, -1, 10},
		{5, 5, 2397910873, -1, 10}, {6, 6, 4201316744, -1, 10}, {8, 8, 2373501355, -1, 10}, {10, 10, 3050183640, -1, 10},
	})
	compact(6)
	check("compacted at 6", []want{
		{0, 10, 3670423651, 6, 10}, {6, 6, 1715280948, 6, 10}, {7, 7, 1201441950, 6, 10},
		{8, 8, 2106790836, 6, 10}, {9, 9, 1982259393, 6, 10},
	})
	compact(8)
	check("compacted at 8", []want{
		{0, 10, 2327358610, 8, 10}, {8, 8, 1084519789, 8, 10}, {9, 9, 1995537353, 8, 10}, {10, 10, 2327358610, 8, 10},
	})
	if _, err := c.Delete(ctx, store.Key([]byte("/e"))); err != nil {
		t.Fatal(err)
	}
	compact(11)
	check("compacted at 11", []want{{0, 11, 1084519789, 11, 11}, {11, 11, 1084519789, 11, 11}})

	if _, err := e.etcd.HashKV(callCtx(t), e.endpoint, 5); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("HashKV below the compacted revision: %v, want %v", err, rpctypes.ErrCompacted)
	}
	if _, err := e.etcd.HashKV(callCtx(t), e.endpoint, 12); !errors.Is(err, rpctypes.ErrFutureRev) {
		t.Errorf("HashKV above the current revision: %v, want %v", err, rpctypes.ErrFutureRev)
	}
}

// Every cp of a database hashes it alike: etcd's consistency check between
// members holds.
func TestHashKVSameOnEveryMember(t *testing.T) {
	a := newEnv(t)
	b, err := walwatch.New(a.client.Store().Pool(), walwatch.Config{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	eb := startServer(t, b)
	for i := range 20 {
		if _, err := a.client.Put(callCtx(t), []byte("/k/"+strings.Repeat("x", i)), []byte(strings.Repeat("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	ha, err := a.etcd.HashKV(callCtx(t), a.endpoint, 0)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := eb.etcd.HashKV(callCtx(t), eb.endpoint, ha.HashRevision)
	if err != nil {
		t.Fatal(err)
	}
	if ha.Hash != hb.Hash || ha.Header.MemberId == hb.Header.MemberId {
		t.Errorf("two members at revision %d: hash %d (member %x) and %d (member %x)", ha.HashRevision,
			ha.Hash, ha.Header.MemberId, hb.Hash, hb.Header.MemberId)
	}
}
