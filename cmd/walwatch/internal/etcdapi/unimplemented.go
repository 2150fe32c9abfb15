package etcdapi

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// The services filled in by their own files; the embedded Unimplemented
// servers answer the methods not written yet with codes.Unimplemented.
type (
	watchServer struct {
		pb.UnimplementedWatchServer
		s *Server
	}
	leaseServer struct {
		pb.UnimplementedLeaseServer
		s *Server
	}
	clusterServer struct {
		pb.UnimplementedClusterServer
		s *Server
	}
	maintenanceServer struct {
		pb.UnimplementedMaintenanceServer
		s *Server
	}
	authServer struct {
		pb.UnimplementedAuthServer
		s *Server
	}
)
