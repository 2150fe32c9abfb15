package etcdapi

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// clusterServer is etcd's Cluster service. walwatch's members are the cps
// serving one database; they need no membership of their own, since
// PostgreSQL holds the data and orders the writes.
type clusterServer struct {
	pb.UnimplementedClusterServer
	s *Server
}

// errMembership answers the calls that change membership.
var errMembership = status.Error(codes.Unimplemented,
	"walwatch: membership is PostgreSQL's: to add a member, start another walwatch cp on the same database; to remove one, stop it")

// MemberList lists this cp, a started member with its client URLs and no
// peer URLs (there is no peer traffic). Its header is etcd's for Cluster
// calls: cluster, member and term, no revision.
func (c *clusterServer) MemberList(context.Context, *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	return &pb.MemberListResponse{
		Header: c.s.header(0),
		Members: []*pb.Member{{
			ID:         c.s.id.memberID,
			Name:       c.s.cfg.Name,
			ClientURLs: c.s.cfg.ClientURLs,
		}},
	}, nil
}

func (c *clusterServer) MemberAdd(context.Context, *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	return nil, errMembership
}

func (c *clusterServer) MemberRemove(context.Context, *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	return nil, errMembership
}

func (c *clusterServer) MemberUpdate(context.Context, *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	return nil, errMembership
}

func (c *clusterServer) MemberPromote(context.Context, *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	return nil, errMembership
}
