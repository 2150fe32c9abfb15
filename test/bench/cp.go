package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/replication"
)

// cpProcess is the walwatch binary's control plane (cp) as a subprocess, for
// one system's turn: started by begin, stopped by end. Its replication slot
// is dropped when it stops, so it never holds WAL while the other systems
// run.
type cpProcess struct {
	serverProcess
	bin, pgURL, slot string
	admin            *pgxpool.Pool
	probe            *http.Client // for /readyz
	log              *slog.Logger

	base string // http://127.0.0.1:PORT, the HTTP API
}

// newCPProcess is a cp on slot that logs to logName in the run's temp dir.
func newCPProcess(e *env, slot, logName string) *cpProcess {
	return &cpProcess{
		serverProcess: serverProcess{name: "cp", logPath: filepath.Join(e.dir, logName)},
		bin:           e.bin,
		pgURL:         e.walwatchURL,
		slot:          slot,
		admin:         e.admin,
		probe:         &http.Client{Timeout: 5 * time.Second},
		log:           e.log,
	}
}

// start runs cp with its HTTP API on a free port and args after its own,
// and waits until /readyz says the hub serves and, with --keyspace-copy,
// until the copy answers reads.
func (p *cpProcess) start(ctx context.Context, args ...string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := p.serverProcess.start(p.bin, append([]string{"--postgres", p.pgURL, "cp", "--listen", addr, "--slot", p.slot}, args...)...); err != nil {
		return err
	}
	p.base = "http://" + addr
	if err := p.await(ctx, "/readyz", func(ctx context.Context) error { return getOK(ctx, p.probe, p.base+"/readyz") }); err != nil {
		return err
	}
	if !slices.Contains(args, "--keyspace-copy") {
		return nil
	}
	// /readyz does not wait for the keyspace copy, whose first load reads
	// every key while gets go to the store (0.1-0.3 s in a quick run,
	// 0.7-8.7 s in a full one as the table grows): a turn that began then
	// would measure part of cp's start.
	start := time.Now()
	if err := p.await(ctx, "its keyspace copy", p.copyLive); err != nil {
		return err
	}
	p.log.Info("cp's keyspace copy live", "after", time.Since(start).Round(time.Millisecond))
	return nil
}

// copyLive reports whether cp's /metrics says its keyspace copy answers
// reads.
func (p *cpProcess) copyLive(ctx context.Context) error {
	body, err := getBody(ctx, p.probe, p.base+"/metrics")
	if err != nil {
		return err
	}
	live, err := metricValue(body, "walwatch_keyspace_copy_live")
	if err != nil {
		return err
	}
	if live != 1 {
		return errors.New("keyspace copy not live")
	}
	return nil
}

// await is serverProcess.await that stops the cp (and drops its slot) if
// it does not become ready.
func (p *cpProcess) await(ctx context.Context, what string, ready func(context.Context) error) error {
	if err := p.serverProcess.await(ctx, what, ready); err != nil {
		return errors.Join(err, p.stop(ctx))
	}
	return nil
}

// stop stops the cp (SIGTERM, then SIGKILL after 10s) and drops its slot.
func (p *cpProcess) stop(ctx context.Context) error {
	if !p.running() {
		return nil
	}
	p.probe.CloseIdleConnections()
	p.serverProcess.stop()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := replication.DropSlot(dctx, p.admin, p.slot, true); err != nil && !errors.Is(err, replication.ErrSlotNotFound) {
		return fmt.Errorf("drop the cp's slot: %w", err)
	}
	return nil
}
