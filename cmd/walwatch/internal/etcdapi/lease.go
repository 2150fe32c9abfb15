package etcdapi

import (
	"context"
	"errors"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/walwatch/walwatch/store"
)

// leaseServer is etcd's Lease service on the walwatch client's store:
// leases are rows with a deadline by the database's clock, a keep-alive
// moves the deadline (no revision, no event), a revoke deletes the lease's
// keys at one revision. Expiry is not here: one cp of the database holds
// that duty (package expiry).
type leaseServer struct {
	pb.UnimplementedLeaseServer
	s *Server
}

var _ pb.LeaseServer = (*leaseServer)(nil)

// Tunables of the keep-alive stream.
var (
	// maxKeepAlivesInFlight bounds the keep-alives of one stream renewed
	// at once and not yet answered. clientv3 sends the keep-alives of all
	// of a client's leases on one stream: taking several at a time lets
	// them share the store's batches (store.KeepAlive), where one at a time
	// would cost each a round trip to PostgreSQL. Past the bound the stream
	// stops reading, and gRPC's flow control holds the client back
	// (issue 15).
	maxKeepAlivesInFlight = 256
)

// errNegativeLeaseID refuses a grant with a negative ID, which etcd would
// take: walwatch's leases are positive (the store's rule).
var errNegativeLeaseID = status.Error(codes.InvalidArgument, "etcdserver: walwatch: a lease ID must be 0 (any) or positive")

// LeaseGrant creates a lease as etcd does: ID 0 asks the server for one,
// a TTL under store.MinLeaseTTL is raised to it. The header carries the
// current revision (a grant writes none).
func (l *leaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	// etcd's order: a TTL too large is refused before a taken ID.
	if r.TTL > store.MaxLeaseTTL {
		return nil, rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	if r.ID < 0 {
		return nil, errNegativeLeaseID
	}
	st := l.s.cfg.Client.Store()
	lease, err := st.Grant(ctx, r.TTL, r.ID)
	if err != nil {
		return nil, toGRPC(err)
	}
	cur, _, err := st.Revision(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &pb.LeaseGrantResponse{Header: l.s.header(cur), ID: lease.ID, TTL: lease.TTL}, nil
}

// LeaseRevoke deletes every key of the lease at one revision, which the
// header carries, and then the lease; a lease without keys costs no
// revision, and the header carries the current one.
func (l *leaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	res, err := l.s.cfg.Client.Store().Revoke(ctx, r.ID)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &pb.LeaseRevokeResponse{Header: l.s.header(l.s.kv.wrote(res.Revision))}, nil
}

// LeaseTimeToLive answers a lease's granted TTL, the seconds it has left
// and, when asked, its keys; an unknown lease answers TTL -1, as etcd's
// does, not an error.
func (l *leaseServer) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	st := l.s.cfg.Client.Store()
	lease, ok, err := l.s.cfg.Client.TimeToLive(ctx, r.ID, r.Keys)
	if err != nil {
		return nil, toGRPC(err)
	}
	cur, _, err := st.Revision(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	if !ok {
		return &pb.LeaseTimeToLiveResponse{Header: l.s.header(cur), ID: r.ID, TTL: -1}, nil
	}
	resp := &pb.LeaseTimeToLiveResponse{Header: l.s.header(cur), ID: r.ID, TTL: lease.Remaining, GrantedTTL: lease.TTL}
	if r.Keys {
		resp.Keys = lease.Keys
	}
	return resp, nil
}

// LeaseLeases lists every lease's ID.
func (l *leaseServer) LeaseLeases(ctx context.Context, _ *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	st := l.s.cfg.Client.Store()
	ids, err := st.Leases(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	cur, _, err := st.Revision(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	leases := make([]*pb.LeaseStatus, len(ids))
	for i, id := range ids {
		leases[i] = &pb.LeaseStatus{ID: id}
	}
	return &pb.LeaseLeasesResponse{Header: l.s.header(cur), Leases: leases}, nil
}

// renewal is one keep-alive of a stream, from its request to its answer.
type renewal struct {
	id     int64
	header int64 // the revision its answer carries, read before the renewal
	ttl    int64 // 0: no such lease, or expired
	err    error
	done   chan struct{} // closed once ttl and err are set
}

// LeaseKeepAlive renews leases as their requests arrive and answers each,
// in order, with the lease's TTL, or 0 when it does not exist or has
// expired. The stream's receiving goroutine starts each renewal, at most
// maxKeepAlivesInFlight unanswered; the handler's goroutine alone sends.
//
// Each answer's header carries the hub's watermark read before the
// renewal: at most the revision at which the renewal happened, as etcd
// takes its header before renewing (a lease revoked at one revision never
// shows renewed at a later one), and without a round trip per keep-alive.
func (l *leaseServer) LeaseKeepAlive(stream grpc.BidiStreamingServer[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	pending := make(chan *renewal, maxKeepAlivesInFlight)
	recvErr := make(chan error, 1)
	go func() {
		defer close(pending)
		recvErr <- l.receiveKeepAlives(ctx, stream, pending)
	}()
	for {
		var r *renewal
		select {
		case r = <-pending:
		case <-ctx.Done():
			// The client went, or the server stops: Recv may still block
			// (the stream lives until this handler returns), so do not
			// wait for it.
			return ctx.Err()
		}
		if r == nil {
			// The receiver ended, and every request it took is answered.
			return <-recvErr
		}
		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// As etcd's: a renewal that failed ends the stream; clientv3
			// opens another and sends its keep-alives again.
			l.s.log.Warn("etcd lease keep-alive failed; ending the stream", "lease", r.id, "err", r.err)
			return toGRPC(r.err)
		}
		if err := stream.Send(&pb.LeaseKeepAliveResponse{Header: l.s.header(r.header), ID: r.id, TTL: r.ttl}); err != nil {
			return err
		}
	}
}

// receiveKeepAlives reads the stream's requests and starts their renewals,
// handing each to the sender through pending, until the client closes its
// side (nil) or the stream fails.
func (l *leaseServer) receiveKeepAlives(ctx context.Context, stream grpc.BidiStreamingServer[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse], pending chan<- *renewal) error {
	hub, st := l.s.cfg.Client.Hub(), l.s.cfg.Client.Store()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		r := &renewal{id: req.ID, header: hub.Watermark(), done: make(chan struct{})}
		select {
		case pending <- r: // waits while maxKeepAlivesInFlight are unanswered
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.id == 0 {
			// No lease has ID 0: etcd's answer, without asking.
			close(r.done)
			continue
		}
		go func() {
			defer close(r.done)
			r.ttl, r.err = st.KeepAlive(ctx, r.id)
		}()
	}
}
