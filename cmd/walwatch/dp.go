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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/cmd/walwatch/internal/dataplane"
	"github.com/walwatch/walwatch/cmd/walwatch/internal/routes"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/sql"
)

type dpOptions struct {
	listen      string
	adminListen string
	cp          string // watch through this control plane; empty: PostgreSQL directly
	cpToken     string
	idleTimeout time.Duration
	// upstream is how long to wait on upstreams, for routes that set no
	// timeout of their own; a zero field takes its default.
	upstream routes.Timeouts
	ready    func(proxy, admin net.Addr) // called once listening (tests, demo)
}

func newDPCommand(g *globals) *cobra.Command {
	o := dpOptions{}
	var upstream struct{ connect, responseHeader, idle time.Duration }
	cmd := &cobra.Command{
		Use:   "dp",
		Short: "Run a data plane: a reverse proxy whose routes follow a watch on /routes/",
		Long: `dp proxies each request to the upstream of the route whose uri matches its
path (exactly, or by prefix for a uri ending in *). Its routes follow a watch:
through a control plane (--cp URL, resuming with Last-Event-ID), or straight
from PostgreSQL with a hub of its own on a temporary slot. While the source is
down it keeps serving the routes it has.

It matches and forwards each path cleaned: dot segments resolved (%2e as
well as '.'), repeated slashes merged, a trailing slash kept. A path that
climbs above the root, has an encoded '/' (%2F) or NUL (%00), or does not
start with '/' is answered 400. An upstream that does not connect, answer
or keep sending within its timeouts (the route's "timeout", else these
flags) is answered 504, or cut off once its response has begun.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.cpToken == "" {
				o.cpToken = os.Getenv("WALWATCH_CP_TOKEN")
			}
			for _, f := range []struct {
				flag string
				d    time.Duration
			}{
				{"upstream-connect-timeout", upstream.connect},
				{"upstream-response-header-timeout", upstream.responseHeader},
				{"upstream-idle-timeout", upstream.idle},
			} {
				if f.d <= 0 || f.d > routes.MaxTimeout {
					return fmt.Errorf("--%s %s: must be above 0 and at most %s", f.flag, f.d, routes.MaxTimeout)
				}
			}
			o.upstream = routes.Timeouts{Connect: routes.Duration(upstream.connect),
				ResponseHeader: routes.Duration(upstream.responseHeader), Idle: routes.Duration(upstream.idle)}
			return runDP(cmd.Context(), g, g.logger(), o)
		},
	}
	cmd.Flags().StringVar(&o.listen, "listen", "127.0.0.1:9080", "address to proxy on")
	cmd.Flags().StringVar(&o.adminListen, "admin-listen", "127.0.0.1:9081", "address for /healthz, /readyz and /metrics")
	cmd.Flags().StringVar(&o.cp, "cp", "", "control plane URL to watch through (default: watch PostgreSQL directly)")
	cmd.Flags().StringVar(&o.cpToken, "cp-token", "", "bearer token for the control plane (default: $WALWATCH_CP_TOKEN)")
	cmd.Flags().DurationVar(&o.idleTimeout, "idle-timeout", 3*replication.DefaultProgressInterval+time.Second,
		"reconnect when the control plane's stream carries nothing, not even progress, for this long")
	cmd.Flags().DurationVar(&upstream.connect, "upstream-connect-timeout", dataplane.DefaultConnectTimeout,
		"give up connecting to an upstream after this long (504); a route's timeout.connect overrides it")
	cmd.Flags().DurationVar(&upstream.responseHeader, "upstream-response-header-timeout", dataplane.DefaultResponseHeaderTimeout,
		"give up waiting for an upstream's response header after this long (504); a route's timeout.response_header overrides it")
	cmd.Flags().DurationVar(&upstream.idle, "upstream-idle-timeout", dataplane.DefaultIdleTimeout,
		"cut off a response whose upstream sends nothing for this long; a route's timeout.idle overrides it")
	return cmd
}

func runDP(ctx context.Context, g *globals, log *slog.Logger, o dpOptions) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	proxy := dataplane.New(log.With("component", "routes"), reg, dataplane.Config{Timeouts: o.upstream})

	var source dataplane.Source
	if o.cp != "" {
		source = &dataplane.ControlPlane{URL: o.cp, Token: o.cpToken, Client: &http.Client{}, Log: log.With("component", "source"), IdleTimeout: o.idleTimeout}
	} else {
		pool, err := g.poolOf(ctx, serverPoolSize)
		if err != nil {
			return err
		}
		defer pool.Close()
		if err := sql.CheckVersion(ctx, pool); err != nil {
			return err
		}
		client, err := walwatch.New(pool, walwatch.Config{
			Hub:    replication.Config{Logger: log.With("component", "hub"), Metrics: replication.NewMetrics(reg)},
			Logger: log,
		})
		if err != nil {
			return err
		}
		defer client.Close() // before the pool's
		source = &dataplane.Direct{Client: client, Log: log.With("component", "source")}
	}

	proxyLn, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("data plane: listen on %s: %w", o.listen, err)
	}
	adminLn, err := net.Listen("tcp", o.adminListen)
	if err != nil {
		proxyLn.Close()
		return fmt.Errorf("data plane admin: listen on %s: %w", o.adminListen, err)
	}
	admin := http.NewServeMux()
	admin.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	admin.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	admin.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !proxy.Loaded() {
			http.Error(w, "routes not loaded yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ready: %d routes at revision %d\n", proxy.Table().Len(), proxy.Revision())
	})
	servers := []*http.Server{
		{Handler: proxy, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 64 << 10},
		{Handler: admin, ReadHeaderTimeout: 10 * time.Second},
	}
	errs := make(chan error, 3)
	go func() { errs <- servers[0].Serve(proxyLn) }()
	go func() { errs <- servers[1].Serve(adminLn) }()
	srcCtx, stopSource := context.WithCancel(ctx)
	defer stopSource()
	go func() { errs <- source.Run(srcCtx, proxy) }()
	log.Info("data plane listening", "addr", proxyLn.Addr().String(), "admin", adminLn.Addr().String(), "source", sourceName(o))
	if o.ready != nil {
		o.ready(proxyLn.Addr(), adminLn.Addr())
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	log.Info("data plane shutting down")
	stopSource()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("graceful shutdown incomplete", "err", err)
		}
	}
	if errors.Is(runErr, http.ErrServerClosed) {
		runErr = nil
	}
	return runErr
}

func sourceName(o dpOptions) string {
	if o.cp != "" {
		return strings.TrimSuffix(o.cp, "/")
	}
	return "postgres"
}
