package etcdapi

import (
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestServesGRPC(t *testing.T) {
	e := newEnv(t)
	// The auth service is etcd's and answers, though not implemented.
	_, err := e.etcd.AuthStatus(callCtx(t))
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("AuthStatus: %v, want Unimplemented", err)
	}
	_ = rpctypes.ErrGRPCEmptyKey
}
