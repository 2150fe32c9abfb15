package etcdapi

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// leaseServer is etcd's Lease service, which answers Unimplemented until
// walwatch has leases (issue 15). A Put with a lease fails meanwhile with
// etcd's "requested lease not found".
type leaseServer struct {
	pb.UnimplementedLeaseServer
	s *Server
}

var errLeases = status.Error(codes.Unimplemented, "walwatch: leases are not implemented yet")

func (l *leaseServer) LeaseGrant(context.Context, *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return nil, errLeases
}

func (l *leaseServer) LeaseRevoke(context.Context, *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return nil, errLeases
}

func (l *leaseServer) LeaseKeepAlive(grpc.BidiStreamingServer[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) error {
	return errLeases
}

func (l *leaseServer) LeaseTimeToLive(context.Context, *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	return nil, errLeases
}

func (l *leaseServer) LeaseLeases(context.Context, *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return nil, errLeases
}
