package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/autocompact"
	"github.com/walwatch/walwatch/cmd/walwatch/internal/etcdapi"
	"github.com/walwatch/walwatch/cmd/walwatch/internal/httpapi"
	"github.com/walwatch/walwatch/expiry"
	"github.com/walwatch/walwatch/keyspace"
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
	etcd         etcdOptions
	// etcd's auto-compaction flags, and the policy read from them.
	compactionMode, compactionRetention string
	compaction                          autocompact.Policy
	pprof                               bool                // etcd's --enable-pprof: /debug/pprof/ on the HTTP API
	keyspaceCopy                        bool                // walwatch.Config.KeyspaceCopy
	ready                               func(addr net.Addr) // called once listening (tests, demo)
}

// etcdOptions configure the control plane's etcd v3 API.
type etcdOptions struct {
	listen          string // "": off
	certFile        string
	keyFile         string
	trustedCAFile   string
	advertise       []string // client URLs; empty: derived from the address bound
	name            string
	progress        time.Duration
	emulatedVersion string
	tls             *tls.Config         // from the files, set by check
	ready           func(addr net.Addr) // called once listening (tests, demo)
}

// Where cp serves unless told: its HTTP API, and etcd's API on etcd's own
// client address.
const (
	defaultEtcdListen = "127.0.0.1:2379"
	defaultCPListen   = "127.0.0.1:9180"
)

// defaultEtcdName is the member name MemberList gives: the host's.
func defaultEtcdName() string {
	if host, err := os.Hostname(); err == nil && host != "" {
		return host
	}
	return "walwatch"
}

// addEtcdFlags adds the flags of etcd's API to a command's flags.
func addEtcdFlags(cmd *cobra.Command, o *etcdOptions) {
	o.progress = etcdapi.DefaultProgressInterval
	o.emulatedVersion = etcdapi.DefaultEmulatedVersion
	fs := cmd.Flags()
	fs.StringVar(&o.listen, "etcd-listen", defaultEtcdListen, `address to serve etcd's v3 API on (gRPC and its JSON gateway); "" turns it off`)
	fs.StringVar(&o.certFile, "etcd-cert-file", "", "TLS certificate of the etcd API (PEM); with --etcd-key-file it serves TLS only")
	fs.StringVar(&o.keyFile, "etcd-key-file", "", "TLS private key of the etcd API (PEM)")
	fs.StringVar(&o.trustedCAFile, "etcd-trusted-ca-file", "", "CA certificates (PEM) a client's certificate must be signed by: client certificates are then required")
	fs.StringSliceVar(&o.advertise, "etcd-advertise-client-urls", nil, "client URLs of this member, as MemberList gives them (default: http(s)://ADDRESS of --etcd-listen, with the port bound)")
	fs.StringVar(&o.name, "etcd-name", defaultEtcdName(), "this member's name in MemberList")
	fs.DurationVar(&o.progress, "etcd-progress-interval", o.progress, "how often an idle etcd watch that asked for progress notifications gets one")
	fs.StringVar(&o.emulatedVersion, "etcd-emulated-version", o.emulatedVersion, "the etcd version Status reports (clients switch features on by it)")
}

// check validates the etcd flags and loads the TLS files, before anything
// connects.
func (o *etcdOptions) check() error {
	if o.listen == "" {
		for flag, v := range map[string]string{"--etcd-cert-file": o.certFile, "--etcd-key-file": o.keyFile,
			"--etcd-trusted-ca-file": o.trustedCAFile, "--etcd-advertise-client-urls": strings.Join(o.advertise, ",")} {
			if v != "" {
				return fmt.Errorf(`%s given, but the etcd API is off (--etcd-listen "")`, flag)
			}
		}
		return nil
	}
	switch {
	case o.certFile != "" && o.keyFile == "":
		return errors.New("--etcd-cert-file needs --etcd-key-file")
	case o.keyFile != "" && o.certFile == "":
		return errors.New("--etcd-key-file needs --etcd-cert-file")
	case o.trustedCAFile != "" && o.certFile == "":
		return errors.New("--etcd-trusted-ca-file needs --etcd-cert-file and --etcd-key-file: client certificates are checked over TLS")
	case o.progress <= 0:
		return fmt.Errorf("--etcd-progress-interval %v: must be positive", o.progress)
	}
	if err := checkVersion(o.emulatedVersion); err != nil {
		return fmt.Errorf("--etcd-emulated-version %q: %w", o.emulatedVersion, err)
	}
	for _, u := range o.advertise {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("--etcd-advertise-client-urls: %q is not an http(s)://host:port URL", u)
		}
	}
	if o.certFile == "" {
		o.tls = nil
		return nil
	}
	cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
	if err != nil {
		return fmt.Errorf("etcd API: load --etcd-cert-file and --etcd-key-file: %w", err)
	}
	o.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if o.trustedCAFile != "" {
		pem, err := os.ReadFile(o.trustedCAFile)
		if err != nil {
			return fmt.Errorf("etcd API: read --etcd-trusted-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("etcd API: --etcd-trusted-ca-file %s holds no PEM certificate", o.trustedCAFile)
		}
		o.tls.ClientCAs = pool
		o.tls.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return nil
}

// checkVersion accepts a version of the form MAJOR.MINOR.PATCH, as etcd's
// clients parse it.
func checkVersion(v string) error {
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return errors.New("want MAJOR.MINOR.PATCH, such as 3.7.3")
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, 32); err != nil {
			return errors.New("want MAJOR.MINOR.PATCH, such as 3.7.3")
		}
	}
	return nil
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
		Long: `cp serves routes and keys as JSON and watches as Server-Sent Events, and
etcd's v3 API (gRPC and its JSON gateway, on --etcd-listen) for etcdctl, the
etcd Go client and Kubernetes. One watch hub reads one named replication
slot and fans out to every client of both, so any number of data planes and
etcd watchers cost one slot.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.etcd.check(); err != nil {
				return err
			}
			policy, err := autocompact.ParsePolicy(o.compactionMode, o.compactionRetention)
			if err != nil {
				return fmt.Errorf("--auto-compaction-mode %q --auto-compaction-retention %q: %w", o.compactionMode, o.compactionRetention, err)
			}
			o.compaction = policy
			pool, err := g.poolOf(cmd.Context(), serverPoolSize)
			if err != nil {
				return err
			}
			defer pool.Close()
			return runCP(cmd.Context(), g.logger(), pool, o)
		},
	}
	cmd.Flags().StringVar(&o.listen, "listen", defaultCPListen, "address to serve the API on")
	cmd.Flags().StringVar(&o.slot, "slot", defaultSlotName(), "the hub's replication slot (created if missing)")
	cmd.Flags().StringVar(&o.tokenFile, "token-file", "", `bearer tokens, one "TOKEN ro|rw" per line (default: no authentication)`)
	cmd.Flags().DurationVar(&o.holderLimit, "holder-limit", 0, "end a session that holds a revision open longer than this (0: never)")
	cmd.Flags().DurationVar(&o.progress, "progress-interval", replication.DefaultProgressInterval, "how often idle watch streams get a progress comment")
	cmd.Flags().Var(&o.windowBytes, "window-bytes", "memory for recent events, so a watch a little behind is served without PostgreSQL")
	cmd.Flags().Var(&o.bufferBytes, "buffer-bytes", "memory for values committed behind a revision a transaction holds open; watchers read the rest from PostgreSQL")
	cmd.Flags().Var(&o.watcherBytes, "watcher-bytes", "memory for events queued to one watch stream; a slower stream catches up from the window or PostgreSQL")
	cmd.Flags().StringVar(&o.compactionMode, "auto-compaction-mode", string(autocompact.Periodic),
		"as etcd's: periodic (keep the history of the retention period) or revision (keep that many revisions)")
	cmd.Flags().StringVar(&o.compactionRetention, "auto-compaction-retention", "0",
		`as etcd's: for periodic a duration ("1h", "30m") or a number of hours, for revision a number of revisions; 0: no auto-compaction. One cp per database does it`)
	cmd.Flags().BoolVar(&o.keyspaceCopy, "keyspace-copy", false, "keep the latest value of every key in memory and answer reads at the latest revision from it, after one read of the current revision shared by the reads waiting, and ranges at older revisions whose versions it still holds (memory: the keyspace's size, and up to 16 MiB of versions the latest changes replaced)")
	cmd.Flags().BoolVar(&o.pprof, "enable-pprof", false, "as etcd's: serve Go's runtime profiles at /debug/pprof/ on the HTTP API (no authentication)")
	addEtcdFlags(cmd, &o.etcd)
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
	var etcdLn net.Listener
	if o.etcd.listen != "" {
		ln, err := net.Listen("tcp", o.etcd.listen)
		if err != nil {
			return fmt.Errorf(`etcd API: listen on %s: %w (choose another address with --etcd-listen, or turn it off with --etcd-listen "")`, o.etcd.listen, err)
		}
		etcdLn = ln
		defer etcdLn.Close() // closed already once served
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
		// Every cp takes part in the lease expiry duty; one holds it.
		LeaseExpiry:  &expiry.Config{Logger: log.With("component", "expiry")},
		Logger:       log,
		KeyspaceCopy: o.keyspaceCopy,
	})
	if err != nil {
		return err
	}
	defer client.Close()
	if c := client.KeyspaceCopy(); c != nil {
		reg.MustRegister(keyspace.NewMetrics(c)...)
	}
	var sides []sideServer
	if !o.compaction.Off() {
		cfg := autocompact.Config{
			Pool: pool, Store: client.Store(), Policy: o.compaction,
			Logger: log.With("component", "autocompact"), Metrics: autocompact.NewMetrics(reg),
		}
		sides = append(sides, sideServer{what: "auto-compaction", serve: func(ctx context.Context) error { return autocompact.Run(ctx, cfg) }})
	}
	if etcdLn != nil {
		side, err := etcdServer(ctx, log.With("component", "etcd"), client, reg, o.etcd, etcdLn)
		if err != nil {
			return err
		}
		sides = append(sides, side)
	}
	stopping := make(chan struct{})
	api := httpapi.New(httpapi.Config{
		Client: client, Slot: o.slot, Tokens: tokens,
		Registry: reg, Logger: log.With("component", "api"), Stopping: stopping,
	})
	var handler http.Handler = api
	if o.pprof {
		handler = withPprof(api)
	}
	return serve(ctx, log, o.listen, handler, client, stopping, o.ready, "control plane", sides...)
}

// withPprof serves Go's runtime profiles under /debug/pprof/ and everything
// else with h.
func withPprof(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/", h)
	return mux
}

// etcdServer returns etcd's v3 API on client, to serve on ln: its client
// URLs are the ones given or, by default, ln's address (the port bound,
// the host name for an unspecified address).
func etcdServer(ctx context.Context, log *slog.Logger, client *walwatch.Client, reg prometheus.Registerer,
	o etcdOptions, ln net.Listener) (sideServer, error) {
	scheme, security := "http", "none"
	if o.tls != nil {
		scheme, security = "https", "TLS"
		if o.tls.ClientAuth == tls.RequireAndVerifyClientCert {
			security = "TLS with client certificates"
		}
	}
	urls := o.advertise
	addr := ln.Addr().(*net.TCPAddr)
	if len(urls) == 0 {
		host := addr.IP.String()
		if addr.IP.IsUnspecified() {
			host = defaultEtcdName()
		}
		urls = []string{scheme + "://" + net.JoinHostPort(host, strconv.Itoa(addr.Port))}
	}
	srv, err := etcdapi.New(ctx, etcdapi.Config{
		Client: client, Name: o.name, ClientURLs: urls, TLS: o.tls,
		EmulatedVersion: o.emulatedVersion, ProgressInterval: o.progress,
		Registry: reg, Logger: log,
	})
	if err != nil {
		return sideServer{}, fmt.Errorf("etcd API: %w", err)
	}
	if o.tls == nil && !addr.IP.IsLoopback() {
		log.Warn("etcd API without TLS on a non-loopback address: whoever reaches it may read and write every key; "+
			"give --etcd-cert-file, --etcd-key-file and --etcd-trusted-ca-file", "addr", addr.String())
	}
	log.Info("etcd API listening", "addr", addr.String(), "client_urls", strings.Join(urls, ","), "security", security,
		"version", o.emulatedVersion)
	if o.ready != nil {
		o.ready(addr)
	}
	return sideServer{what: "etcd API", serve: func(ctx context.Context) error { return srv.Serve(ctx, ln) }}, nil
}

// sideServer is a server that runs beside the control plane's HTTP API,
// until its context ends.
type sideServer struct {
	what  string
	serve func(ctx context.Context) error
}

// serve runs an HTTP server for h, and the side servers, until ctx ends,
// one of them stops or client's hub fails, then shuts all down: streams are
// told to end (stopping), requests in flight finish, and then the client
// closes.
func serve(ctx context.Context, log *slog.Logger, addr string, h http.Handler, client *walwatch.Client,
	stopping chan struct{}, ready func(net.Addr), what string, sides ...sideServer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: listen on %s: %w", what, addr, err)
	}
	sideCtx, stopSides := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSides()
	sideDone := make(chan error, len(sides))
	for _, side := range sides {
		go func() {
			err := side.serve(sideCtx)
			if err == nil && sideCtx.Err() == nil {
				err = errors.New("stopped")
			}
			if err != nil {
				err = fmt.Errorf("%s: %w", side.what, err)
			}
			sideDone <- err
		}()
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 64 << 10}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	log.Info(what+" listening", "addr", ln.Addr().String())
	if ready != nil {
		ready(ln.Addr())
	}

	var serveErr error
	running := len(sides)
	select {
	case <-ctx.Done():
	case serveErr = <-srvDone:
	case serveErr = <-sideDone:
		running--
	case <-client.Done():
		serveErr = client.Err()
	}
	log.Info(what + " shutting down")
	if stopping != nil {
		close(stopping)
	}
	stopSides() // each bounds its own graceful stop
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("graceful shutdown incomplete", "err", err)
	}
	for ; running > 0; running-- {
		if err := <-sideDone; err != nil {
			log.Warn("graceful shutdown incomplete", "err", err)
		}
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
