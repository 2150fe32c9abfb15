// Package etcdapi serves etcd's v3 API (gRPC and its JSON gateway, on one
// port) on a walwatch client: its store for the KV service, its hub for
// Watch. The wire code is etcd's own (go.etcd.io/etcd/api/v3: messages,
// services, rpctypes errors, the gw gateway handlers); what this package
// writes is the mapping to walwatch's store and hub, with etcd v3.7's rules.
package etcdapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	gw "github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/soheilhy/cmux"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	etcdgw "go.etcd.io/etcd/api/v3/etcdserverpb/gw"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/walwatch/walwatch"
)

// Defaults of Config, etcd's where etcd has one.
const (
	// DefaultEmulatedVersion is the etcd version Status reports; clients
	// switch features on by it.
	DefaultEmulatedVersion = "3.7.3"
	// DefaultProgressInterval is etcd's --experimental-watch-progress-notify-interval.
	DefaultProgressInterval = 10 * time.Minute
	// DefaultMaxRequestBytes is etcd's --max-request-bytes (1.5 MiB).
	DefaultMaxRequestBytes = 3 << 19
	// grpcOverheadBytes is what etcd allows a gRPC message beyond
	// MaxRequestBytes, so that a request at the limit is refused by the
	// server's own check, with etcd's message, not by the transport.
	grpcOverheadBytes = 512 * 1024
	// maxSendBytes bounds a response, as etcd's default MaxCallSendMsgSize
	// (math.MaxInt32).
	maxSendBytes = 1<<31 - 1
	// streamWorkers serve requests on goroutines that outlive them. gRPC's
	// default, a goroutine per request, grows a fresh stack for each (6% of
	// cp's CPU on gets in a profile); with workers a put, get or member list
	// at 32 clients took 20-40% less of cp's CPU. A request that finds every
	// worker busy (watch streams hold theirs) gets a goroutine of its own, as
	// without workers. Twice cp's 32 PostgreSQL connections: a worker
	// mostly waits on PostgreSQL.
	streamWorkers = 64
	// maxWindowBytes bounds a stream's flow-control window, so that the
	// connection's, twice as large, stays within HTTP/2's 2^31-1.
	maxWindowBytes = 1<<30 - 1
	// bufconnSize is the buffer of the in-process connection the JSON
	// gateway uses to reach the gRPC server.
	bufconnSize = 1 << 20
	// gatewaySlackBytes is what a gateway request's body may hold beyond
	// the base64 of the largest gRPC message: field names, other fields.
	gatewaySlackBytes = 64 << 10
)

// gatewayBodyBytes bounds the body of a JSON gateway request: the base64
// of the largest message gRPC takes, and some slack, so a request the gRPC
// server would take is never refused for its JSON, and one over the limit
// gets the gRPC server's answer, as from etcd. (A watch's body carries all
// its requests; they are small.)
func gatewayBodyBytes(maxRequestBytes int) int64 {
	return int64(maxRequestBytes+grpcOverheadBytes)/3*4 + gatewaySlackBytes
}

// Config configures a Server.
type Config struct {
	Client *walwatch.Client
	// Name is this member's name in MemberList (etcd's --name).
	Name string
	// ClientURLs are the URLs this member serves clients on, as MemberList
	// and the member ID give them.
	ClientURLs []string
	// TLS, when set, serves TLS only; with ClientAuth set to
	// tls.RequireAndVerifyClientCert it takes only clients with a
	// certificate of ClientCAs, as kube-apiserver talks to etcd.
	TLS *tls.Config
	// EmulatedVersion is the etcd version Status reports ("" takes
	// DefaultEmulatedVersion).
	EmulatedVersion string
	// ProgressInterval is how often an idle watcher that asked for
	// progress_notify gets a progress response (0 takes
	// DefaultProgressInterval).
	ProgressInterval time.Duration
	// MaxRequestBytes bounds a request (0 takes DefaultMaxRequestBytes).
	MaxRequestBytes int
	// Registry receives the gRPC metrics and the watch gauges; nil records
	// nothing.
	Registry prometheus.Registerer
	Logger   *slog.Logger
}

// Server is etcd's v3 API on a walwatch client.
type Server struct {
	cfg     Config
	log     *slog.Logger
	id      identity
	grpc    *grpc.Server
	metrics *metrics
	kv      *kvServer // its last write, which a lease's revoke moves too
	// stopping is closed when Serve begins to stop: streams end then (with
	// etcd's "server stopped", which clients retry elsewhere or later),
	// rather than hold the graceful stop until its timeout.
	stopping chan struct{}
	stopOnce sync.Once
}

// New returns a server on cfg.Client. It reads the database's identity
// (the member and cluster IDs derive from it), so PostgreSQL must answer.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Client == nil {
		return nil, errors.New("etcdapi: no client")
	}
	if cfg.EmulatedVersion == "" {
		cfg.EmulatedVersion = DefaultEmulatedVersion
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = DefaultProgressInterval
	}
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.Name == "" {
		cfg.Name = "walwatch"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	id, err := readIdentity(ctx, cfg.Client.Store().Pool(), cfg.Name, cfg.ClientURLs)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, id: id, metrics: newMetrics(cfg.Registry), stopping: make(chan struct{})}
	window := int32(min(cfg.MaxRequestBytes+grpcOverheadBytes, maxWindowBytes))
	s.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(cfg.MaxRequestBytes+grpcOverheadBytes),
		grpc.MaxSendMsgSize(maxSendBytes),
		grpc.MaxConcurrentStreams(1<<31-1),
		grpc.NumStreamWorkers(streamWorkers),
		// Static windows: the largest request goes in without waiting for
		// a window update, and gRPC does not estimate the link (its default,
		// and etcd's), which pings the client after a request's data: one
		// more frame each way a request. bench-quick before and after, two
		// runs each: etcd-API gets at 32 clients 4.8k/5.5k -> 6.3k/6.2k a
		// second, puts 3.0k/3.0k -> 3.2k/3.9k, round trip p50 1.34/1.35 ->
		// 1.17/1.16 ms. The connection's window, twice a stream's, bounds
		// what a client may send that the server has not read yet.
		grpc.InitialWindowSize(window),
		grpc.InitialConnWindowSize(2*window),
		grpc.ChainUnaryInterceptor(s.metrics.grpc.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(s.metrics.grpc.StreamServerInterceptor(), s.endOnStop),
		// etcd's defaults: a client may ping every 5 s; the server pings an
		// idle connection after 2 h and gives it 20 s to answer.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: false}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Hour, Timeout: 20 * time.Second}),
	)
	s.kv = &kvServer{s: s}
	pb.RegisterKVServer(s.grpc, s.kv)
	pb.RegisterWatchServer(s.grpc, &watchServer{s: s})
	pb.RegisterLeaseServer(s.grpc, &leaseServer{s: s})
	pb.RegisterClusterServer(s.grpc, &clusterServer{s: s})
	pb.RegisterMaintenanceServer(s.grpc, &maintenanceServer{s: s})
	pb.RegisterAuthServer(s.grpc, &authServer{s: s})
	s.metrics.grpc.InitializeMetrics(s.grpc)
	return s, nil
}

// Serve serves gRPC and the JSON gateway on l until ctx ends, then stops:
// unary calls in flight finish (within shutdownTimeout), watch streams end.
// It closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	// The gateway reaches the gRPC server through a client connection, as
	// etcd's does (grpc-gateway's in-process registration cannot stream);
	// an in-memory one needs neither a port nor the server's TLS.
	inproc := bufconn.Listen(bufconnSize)
	conn, err := grpc.NewClient("passthrough:///etcdapi-gateway",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return inproc.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxSendBytes), grpc.MaxCallSendMsgSize(maxSendBytes)),
	)
	if err != nil {
		l.Close()
		return fmt.Errorf("etcd gateway: connect to the gRPC server: %w", err)
	}
	defer conn.Close()
	mux, err := s.gateway(ctx, conn)
	if err != nil {
		l.Close()
		return err
	}
	httpSrv := &http.Server{
		Handler:           http.MaxBytesHandler(mux, gatewayBodyBytes(s.cfg.MaxRequestBytes)),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}

	errs := make(chan error, 4)
	go func() { errs <- s.grpc.Serve(inproc) }()
	var m cmux.CMux
	if s.cfg.TLS == nil {
		// One port, two protocols, as etcd serves them: HTTP/2 is gRPC,
		// HTTP/1 the gateway.
		m = cmux.New(l)
		grpcL := m.Match(cmux.HTTP2())
		httpL := m.Match(cmux.Any())
		go func() { errs <- s.grpc.Serve(grpcL) }()
		go func() { errs <- httpSrv.Serve(httpL) }()
		go func() { errs <- m.Serve() }()
	} else {
		// Over TLS, net/http terminates it and hands gRPC requests (HTTP/2,
		// application/grpc) to the gRPC server, as etcd does.
		httpSrv.TLSConfig = s.cfg.TLS.Clone()
		if len(httpSrv.TLSConfig.NextProtos) == 0 {
			httpSrv.TLSConfig.NextProtos = []string{"h2", "http/1.1"} // gRPC needs HTTP/2
		}
		httpSrv.Handler = grpcOrHTTP(s.grpc, httpSrv.Handler)
		go func() { errs <- httpSrv.ServeTLS(l, "", "") }()
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errs:
	}
	s.stopOnce.Do(func() { close(s.stopping) })
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	httpSrv.Shutdown(sctx) //nolint:errcheck // streams still open are closed below
	httpSrv.Close()        //nolint:errcheck
	select {
	case <-stopped:
	case <-sctx.Done():
		s.grpc.Stop()
		<-stopped
	}
	if m != nil {
		m.Close()
	}
	l.Close()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && !errors.Is(serveErr, grpc.ErrServerStopped) &&
		!errors.Is(serveErr, cmux.ErrListenerClosed) && !errors.Is(serveErr, net.ErrClosed) {
		return fmt.Errorf("etcd API: %w", serveErr)
	}
	return nil
}

// shutdownTimeout bounds how long Serve waits for calls in flight.
const shutdownTimeout = 10 * time.Second

// endOnStop ends a stream once the server is stopping: its handler sees its
// context end, and the client gets etcd's "server stopped" (Unavailable),
// on which clientv3 reconnects and resumes a watch from its last revision.
func (s *Server) endOnStop(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := context.WithCancel(ss.Context())
	var cut atomic.Bool // by the stop, not by the client or the handler
	go func() {
		select {
		case <-s.stopping:
			cut.Store(true)
			cancel()
		case <-ctx.Done():
		}
	}()
	err := handler(srv, &stoppableStream{ServerStream: ss, ctx: ctx})
	cancel()
	if cut.Load() && ss.Context().Err() == nil {
		return rpctypes.ErrGRPCStopped
	}
	return err
}

// stoppableStream is a server stream whose context ends when the server
// stops.
type stoppableStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stoppableStream) Context() context.Context { return s.ctx }

// gateway returns etcd's JSON gateway on conn, with etcd's marshaling:
// proto field names, zero values left out, unknown fields ignored, and
// etcd's /version and /health beside it.
func (s *Server) gateway(ctx context.Context, conn *grpc.ClientConn) (http.Handler, error) {
	mux := gw.NewServeMux(gw.WithMarshalerOption(gw.MIMEWildcard, &gw.HTTPBodyMarshaler{
		Marshaler: &gw.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		},
	}))
	for _, register := range []func(context.Context, *gw.ServeMux, *grpc.ClientConn) error{
		etcdgw.RegisterKVHandler,
		etcdgw.RegisterWatchHandler,
		etcdgw.RegisterLeaseHandler,
		etcdgw.RegisterClusterHandler,
		etcdgw.RegisterMaintenanceHandler,
		etcdgw.RegisterAuthHandler,
	} {
		if err := register(ctx, mux, conn); err != nil {
			return nil, fmt.Errorf("etcd gateway: %w", err)
		}
	}
	root := http.NewServeMux()
	root.Handle("/", fullDuplex(mux))
	root.HandleFunc("GET /version", s.version)
	root.HandleFunc("GET /health", s.health)
	return root, nil
}

// fullDuplex lets a handler read the request body while it writes the
// response, which an HTTP/1 streaming call needs to take requests after
// its first response (a watch created after the first events). Without
// it, as with etcd's gateway, net/http first reads the body to its end,
// and such a client waits for ever; a client that sends its whole body at
// once, as curl -d does, is served either way.
func fullDuplex(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 1 {
			_ = http.NewResponseController(w).EnableFullDuplex() // best effort
		}
		h.ServeHTTP(w, r)
	})
}

// version answers etcd's GET /version, which some clients (APISIX, for one)
// read before anything else to check the cluster's version.
func (s *Server) version(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	v := storageVersion(s.cfg.EmulatedVersion)
	json.NewEncoder(w).Encode(struct { //nolint:errcheck // the client went away
		Server  string `json:"etcdserver"`
		Cluster string `json:"etcdcluster"`
		Storage string `json:"storage"`
	}{s.cfg.EmulatedVersion, v, v})
}

// healthTimeout bounds the read /health makes.
const healthTimeout = 5 * time.Second

// health answers etcd's GET /health: healthy when PostgreSQL answers a
// read of the revision.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
	defer cancel()
	type answer struct {
		Health string `json:"health"`
		Reason string `json:"reason"`
	}
	a, code := answer{Health: "true"}, http.StatusOK
	if _, _, err := s.cfg.Client.Store().Revision(ctx); err != nil {
		a, code = answer{Health: "false", Reason: "walwatch: " + err.Error()}, http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(a) //nolint:errcheck // the client went away
}

// grpcOrHTTP sends gRPC requests to g and the rest to h.
func grpcOrHTTP(g *grpc.Server, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			g.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// metrics are the server's Prometheus metrics.
type metrics struct {
	grpc     *grpcprom.ServerMetrics
	streams  prometheus.Gauge
	watchers prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}))),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "walwatch", Subsystem: "etcd", Name: "watch_streams",
			Help: "Open etcd Watch streams.",
		}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "walwatch", Subsystem: "etcd", Name: "watchers",
			Help: "Open etcd watchers, over all streams.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.grpc, m.streams, m.watchers)
	}
	return m
}
