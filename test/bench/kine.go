package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sync/errgroup"
)

// kineModule is the kine release the benchmark builds and runs: the etcd
// shim k3s uses, serving etcd's v3 API from a SQL table.
const kineModule = "github.com/k3s-io/kine@v0.17.5"

// kinePoolSize caps kine's connections to PostgreSQL. kine 0.17.5 runs a
// write's INSERT on a second connection while its transaction holds a first
// (Tx.Insert queries through the pool, not the transaction), so a pool no
// larger than the requests in flight deadlocks: it must exceed maxClients.
// kine's default, no cap, would take two connections per write and could
// pass max_connections with the other systems' pools open.
const kinePoolSize = 80

// kineFlags are kine's flags besides its endpoint and listen address: no
// metrics server (it would take :8080), and the pool, all of it kept open
// so that its backends live through a turn and their CPU time is counted
// (a backend that exits takes its share with it).
var kineFlags = []string{
	"--metrics-bind-address", "0",
	"--datastore-max-open-connections", strconv.Itoa(kinePoolSize),
	"--datastore-max-idle-connections", strconv.Itoa(kinePoolSize),
}

// buildKine installs kine into the temp dir.
func (e *env) buildKine(ctx context.Context) error {
	// kine's go.mod has no replace directives, so go install pkg@version
	// builds it as released, with the versions its go.mod requires.
	// CGO_ENABLED=0 gives kine's pure-Go SQLite driver (unused here) instead
	// of the cgo one, so the build needs no C compiler.
	cmd := exec.CommandContext(ctx, "go", "install", kineModule)
	cmd.Dir = e.dir // outside any module
	cmd.Env = append(os.Environ(), "GOBIN="+e.dir, "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("build %s: %w\n%s", kineModule, err, out)
	}
	e.kineBin = filepath.Join(e.dir, "kine")
	return nil
}

// kineSystem is kine as a subprocess on its own database of the benchmark's
// PostgreSQL. Gets and the watcher are etcd's client code; puts are the
// update Txn Kubernetes sends (see put). It runs for the whole run, as the
// etcd does.
type kineSystem struct {
	proc serverProcess
	*etcdClients
}

// newKineSystem starts kine on a free port, connects the clients and waits
// until kine answers a read.
func newKineSystem(ctx context.Context, e *env) (*kineSystem, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	s := &kineSystem{proc: serverProcess{name: "kine", logPath: filepath.Join(e.dir, "kine.log")}}
	args := append([]string{"--endpoint", e.kineURL, "--listen-address", addr}, kineFlags...)
	if err := s.proc.start(e.kineBin, args...); err != nil {
		return nil, err
	}
	c, err := openEtcdClients("http://" + addr)
	if err != nil {
		s.proc.stop()
		return nil, err
	}
	err = s.proc.await(ctx, "a read", c.answers)
	if err != nil {
		c.close()
		s.proc.stop()
		return nil, err
	}
	s.etcdClients = c
	return s, nil
}

// put writes key as Kubernetes writes to kine, with update. kine's own Put
// can report success without writing (it reads the key at a cached current
// revision that may lag, and its update then conflicts unseen), and the
// watcher would wait for events that never come.
func (s *kineSystem) put(ctx context.Context, client int, key, value []byte) error {
	return s.update(ctx, client, key, value)
}

// preload writes keys one put each, from several clients at once: kine's
// Txn serves no batch of puts.
func (s *kineSystem) preload(ctx context.Context, keys [][]byte, value []byte) error {
	const workers = 16
	g, gctx := errgroup.WithContext(ctx)
	for w := range workers {
		g.Go(func() error {
			for i := w; i < len(keys); i += workers {
				if err := s.put(gctx, w, keys[i], value); err != nil {
					return fmt.Errorf("kine preload: %w", err)
				}
			}
			return nil
		})
	}
	return g.Wait()
}

func (s *kineSystem) name() string                { return "kine" }
func (s *kineSystem) begin(context.Context) error { return nil }
func (s *kineSystem) end(context.Context) error   { return nil }
func (s *kineSystem) pids() []int                 { return s.proc.pids() }

func (s *kineSystem) close() {
	s.etcdClients.close()
	s.proc.stop()
}

// kineNote says how kine ran, for the report.
func kineNote() string {
	return fmt.Sprintf("kine: %s (k3s's etcd shim: every revision a row of one table), built with go install from the Go module proxy "+
		"at the start of the run and run as a subprocess for the whole run on a database of its own (kine) of the same PostgreSQL: "+
		"kine --endpoint postgres://…/kine --listen-address 127.0.0.1:PORT %s. The pool is capped above the benchmark's %d clients: "+
		"kine holds two connections per write (its INSERT runs outside the transaction that holds the first), so a smaller pool deadlocks, "+
		"and with no cap it could pass max_connections. Gets and the watcher are the etcd system's code (etcd Go client, KV.Range, one Watch "+
		"on the prefix). Puts are not KV.Put, which this kine can acknowledge without writing (it reads the key at a cached current revision "+
		"that can lag, and does not report the conflict that follows), but the update Kubernetes sends: a Txn that puts the key if its mod "+
		"revision is the one the benchmark last wrote, and else reads it, retried at the revision read; the keys were loaded the same way, "+
		"16 clients at a time, as kine's Txn takes no batch of puts. Its watch polls the table, at once after a local write and every second "+
		"otherwise. Its process's CPU counts where the cp's does.",
		strings.Replace(kineModule, "@", " ", 1), strings.Join(kineFlags, " "), maxClients)
}
