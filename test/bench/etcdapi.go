package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// etcdAPISlot is walwatch_etcd's replication slot.
const etcdAPISlot = "benchcpetcd"

// etcdAPISystem is walwatch through its etcd v3 API: the walwatch binary's
// cp as a subprocess serving etcd's gRPC API (--etcd-listen), driven by the
// same etcd Go client code as the etcd system.
type etcdAPISystem struct {
	cp           *cpProcess
	*etcdClients          // connected for a turn, nil between turns
	revs         sync.Map // the clients' revs, kept from turn to turn
}

func newEtcdAPISystem(e *env) *etcdAPISystem {
	return &etcdAPISystem{cp: newCPProcess(e, etcdAPISlot, "cp-etcd.log")}
}

func (s *etcdAPISystem) name() string { return "walwatch_etcd" }
func (s *etcdAPISystem) pids() []int  { return s.cp.pids() }

// noop is MemberList, which cp answers from memory.
func (s *etcdAPISystem) noop(ctx context.Context, client int) error { return s.memberList(ctx, client) }

// begin starts the control plane with its etcd API on a free port, waits
// until it is ready and answers a read there, and connects the clients.
func (s *etcdAPISystem) begin(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// pprof: its heap profile with gc=1 is how the watcher memory figure
	// collects garbage before it reads the cp's memory.
	if err := s.cp.start(ctx, "--etcd-listen", addr, "--enable-pprof", "--keyspace-copy"); err != nil {
		return err
	}
	c, err := openEtcdClients("http://" + addr)
	if err != nil {
		return errors.Join(err, s.cp.stop(ctx))
	}
	c.revs = &s.revs
	s.etcdClients = c
	err = s.cp.await(ctx, "the etcd API", c.answers)
	if err != nil {
		c.close() // await has stopped the cp
		s.etcdClients = nil
	}
	return err
}

// end disconnects the clients, stops the control plane and drops its slot.
func (s *etcdAPISystem) end(ctx context.Context) error {
	if s.etcdClients != nil {
		s.etcdClients.close()
		s.etcdClients = nil
	}
	return s.cp.stop(ctx)
}
