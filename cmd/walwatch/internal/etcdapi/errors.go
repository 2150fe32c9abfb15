package etcdapi

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
)

// toGRPC maps an error of walwatch's to the status etcd answers with for
// the same condition: its rpctypes error where etcd has one, so that a
// client's errors.Is against rpctypes works. The one place this mapping is
// written.
func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err // already a status (ours, or the client's cancellation)
	}
	switch {
	case errors.Is(err, store.ErrCompacted):
		return rpctypes.ErrGRPCCompacted
	case errors.Is(err, store.ErrFutureRevision):
		return rpctypes.ErrGRPCFutureRev
	case errors.Is(err, store.ErrEmptyKey):
		return rpctypes.ErrGRPCEmptyKey
	case errors.Is(err, store.ErrKeyTooLarge), errors.Is(err, store.ErrValueTooLarge):
		return rpctypes.ErrGRPCRequestTooLarge
	case errors.Is(err, store.ErrTooManyOps):
		return rpctypes.ErrGRPCTooManyOps
	case errors.Is(err, store.ErrDuplicateKey):
		return rpctypes.ErrGRPCDuplicateKey
	case errors.Is(err, store.ErrKeyNotFound):
		return rpctypes.ErrGRPCKeyNotFound
	case errors.Is(err, store.ErrValueProvided):
		return rpctypes.ErrGRPCValueProvided
	case errors.Is(err, store.ErrLeaseProvided):
		return rpctypes.ErrGRPCLeaseProvided
	case errors.Is(err, store.ErrLeaseNotFound):
		return rpctypes.ErrGRPCLeaseNotFound
	case errors.Is(err, store.ErrLeaseExists):
		return rpctypes.ErrGRPCLeaseExist
	case errors.Is(err, store.ErrLeaseTTLTooLarge):
		return rpctypes.ErrGRPCLeaseTTLTooLarge
	case errors.Is(err, walwatch.ErrNotSettled):
		// A transaction holds a lower revision open: etcd's answer when a
		// request could not be applied in time. Clients retry it.
		return rpctypes.ErrGRPCTimeout
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, store.ErrAborted):
		return status.Error(codes.Unavailable, "etcdserver: "+err.Error())
	case errors.Is(err, replication.ErrHistoryChanged):
		// No etcd error says it; OutOfRange is the code of its compacted
		// error, which a watch cancelled so also carries.
		return status.Error(codes.OutOfRange, "etcdserver: "+err.Error())
	case errors.Is(err, replication.ErrHubStopped), errors.Is(err, walwatch.ErrClosed):
		return rpctypes.ErrGRPCStopped
	case errors.Is(err, context.Canceled):
		return rpctypes.ErrGRPCCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return rpctypes.ErrGRPCDeadlineExceeded
	case errors.Is(err, store.ErrInvalidRevision), errors.Is(err, store.ErrInvalidLimit):
		return status.Error(codes.InvalidArgument, "etcdserver: "+err.Error())
	}
	return status.Error(codes.Unknown, err.Error())
}

// Errors of etcd's that its rpctypes package does not name.
var (
	// etcd 3.7's answers to a RangeStream that sorts or filters by revision.
	errRangeStreamSort    = status.Error(codes.Unimplemented, "RangeStream does not support custom sort orders")
	errRangeStreamFilters = status.Error(codes.Unimplemented, "RangeStream does not support revision filters")
)
