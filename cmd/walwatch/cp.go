package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/cmd/walwatch/internal/httpapi"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/sql"
)

// shutdownTimeout bounds a graceful shutdown: requests in flight finish,
// watch streams are ended.
const shutdownTimeout = 10 * time.Second

// cpOptions configure a control plane.
type cpOptions struct {
	listen      string
	slot        string
	tokenFile   string
	holderLimit time.Duration
	progress    time.Duration
	// Bounds on the hub's memory that holds values (replication.Config).
	windowBytes  byteSize
	bufferBytes  byteSize
	watcherBytes byteSize
	ready        func(addr net.Addr) // called once listening (tests, demo)
}

func newCPCommand(g *globals) *cobra.Command {
	o := cpOptions{
		windowBytes:  byteSize(replication.DefaultWindowBytes),
		bufferBytes:  byteSize(replication.DefaultBufferBytes),
		watcherBytes: byteSize(replication.DefaultWatcherBytes),
	}
	cmd := &cobra.Command{
		Use:   "cp",
		Short: "Run the control plane: the HTTP API for routes, keys and watches",
		Long: `cp serves routes and keys as JSON and watches as Server-Sent Events. One
watch hub reads one named replication slot and fans out to every client, so
any number of data planes cost one slot.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			pool, err := g.poolOf(cmd.Context(), serverPoolSize)
			if err != nil {
				return err
			}
			defer pool.Close()
			return runCP(cmd.Context(), g.logger(), pool, o)
		},
	}
	cmd.Flags().StringVar(&o.listen, "listen", "127.0.0.1:9180", "address to serve the API on")
	cmd.Flags().StringVar(&o.slot, "slot", defaultSlotName(), "the hub's replication slot (created if missing)")
	cmd.Flags().StringVar(&o.tokenFile, "token-file", "", `bearer tokens, one "TOKEN ro|rw" per line (default: no authentication)`)
	cmd.Flags().DurationVar(&o.holderLimit, "holder-limit", 0, "end a session that holds a revision open longer than this (0: never)")
	cmd.Flags().DurationVar(&o.progress, "progress-interval", replication.DefaultProgressInterval, "how often idle watch streams get a progress comment")
	cmd.Flags().Var(&o.windowBytes, "window-bytes", "memory for recent events, so a watch a little behind is served without PostgreSQL")
	cmd.Flags().Var(&o.bufferBytes, "buffer-bytes", "memory for values committed behind a revision a transaction holds open; watchers read the rest from PostgreSQL")
	cmd.Flags().Var(&o.watcherBytes, "watcher-bytes", "memory for events queued to one watch stream; a slower stream catches up from the window or PostgreSQL")
	return cmd
}

// defaultSlotName derives the slot from the host, so each cp host has its own.
func defaultSlotName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "local"
	}
	var b strings.Builder
	b.WriteString("walwatch_cp_")
	for _, r := range strings.ToLower(host) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()[:min(b.Len(), 63)]
}

// runCP serves the control plane until ctx ends.
func runCP(ctx context.Context, log *slog.Logger, pool *pgxpool.Pool, o cpOptions) error {
	if err := sql.CheckVersion(ctx, pool); err != nil {
		return err
	}
	var tokens *httpapi.Tokens
	if o.tokenFile != "" {
		f, err := os.Open(o.tokenFile)
		if err != nil {
			return fmt.Errorf("open token file: %w", err)
		}
		tokens, err = httpapi.ParseTokens(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", o.tokenFile, err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(slotLagGauge(pool, o.slot))
	client, err := walwatch.New(pool, walwatch.Config{
		Hub: replication.Config{
			Slot: o.slot, HolderLimit: o.holderLimit, ProgressInterval: o.progress,
			WindowBytes: int(o.windowBytes), BufferBytes: int(o.bufferBytes), WatcherBytes: int(o.watcherBytes),
			Logger: log.With("component", "hub"), Metrics: replication.NewMetrics(reg),
		},
		Logger: log,
	})
	if err != nil {
		return err
	}
	defer client.Close()
	stopping := make(chan struct{})
	api := httpapi.New(httpapi.Config{
		Client: client, Slot: o.slot, Tokens: tokens,
		Registry: reg, Logger: log.With("component", "api"), Stopping: stopping,
	})
	return serve(ctx, log, o.listen, api, client, stopping, o.ready, "control plane")
}

// serve runs an HTTP server for h until ctx ends or client's hub fails, then
// shuts both down: streams are told to end (stopping), requests in flight
// finish, and then the client closes.
func serve(ctx context.Context, log *slog.Logger, addr string, h http.Handler, client *walwatch.Client,
	stopping chan struct{}, ready func(net.Addr), what string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: listen on %s: %w", what, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 64 << 10}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	log.Info(what+" listening", "addr", ln.Addr().String())
	if ready != nil {
		ready(ln.Addr())
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-srvDone:
	case <-client.Done():
		serveErr = client.Err()
	}
	log.Info(what + " shutting down")
	if stopping != nil {
		close(stopping)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("graceful shutdown incomplete", "err", err)
	}
	client.Close() //nolint:errcheck // its failure, if any, is serveErr already
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}

// slotLagGauge reports the WAL the hub's slot holds, read at scrape time.
func slotLagGauge(pool *pgxpool.Pool, slot string) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "walwatch", Subsystem: "slot", Name: "wal_held_bytes",
		Help: "WAL the control plane's replication slot keeps on the server (its lag).",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		info, err := replication.GetSlot(ctx, pool, slot)
		if err != nil {
			return -1
		}
		return float64(info.WALHeldBytes)
	})
}
