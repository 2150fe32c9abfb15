package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/walwatch/walwatch/cmd/walwatch/internal/routes"
)

// forward is where ServeHTTP sends a request. It travels in the request's
// context to the reverse proxy, its transport and its dialer, so that one
// reverse proxy serves every route.
type forward struct {
	route    string // the route's name
	upstream string
	target   *url.URL
	path     string          // the cleaned path, as matched and sent on
	timeouts routes.Timeouts // every field set
}

type forwardKey struct{}

// forwardOf returns the forward in ctx, or nil.
func forwardOf(ctx context.Context) *forward {
	f, _ := ctx.Value(forwardKey{}).(*forward)
	return f
}

// ServeHTTP proxies r to its route's upstream, matched and sent on by its
// cleaned path: 400 for a path that cannot be cleaned, 404 "no route"
// without a route, 504 when the upstream times out, 502 when it fails
// otherwise.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path, rawPath, err := cleanPath(r.URL)
	if err != nil {
		p.metrics.requests.WithLabelValues("bad_path").Inc()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	name, rt, ok := p.table.Load().Match(path)
	if !ok {
		p.metrics.requests.WithLabelValues("no_route").Inc()
		http.Error(w, "no route", http.StatusNotFound)
		return
	}
	target, err := url.Parse(rt.Upstream) // validated when the route was read: not expected to fail
	if err != nil {
		p.metrics.requests.WithLabelValues("bad_upstream").Inc()
		http.Error(w, "bad upstream", http.StatusBadGateway)
		return
	}
	f := &forward{route: name, upstream: rt.Upstream, target: target, path: path, timeouts: rt.Timeout.Or(p.timeouts)}
	out := r.WithContext(context.WithValue(r.Context(), forwardKey{}, f))
	u := *r.URL
	u.Path, u.RawPath = path, rawPath
	out.URL = &u
	p.metrics.requests.WithLabelValues("proxied").Inc()
	p.rp.ServeHTTP(w, out)
}

func (p *Proxy) newReverseProxy() *httputil.ReverseProxy {
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.DialContext = p.dialUpstream
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(forwardOf(pr.In.Context()).target)
			pr.SetXForwarded()
		},
		Transport:     &transport{p: p, base: base},
		FlushInterval: -1, // stream responses as they come
		ErrorHandler:  p.upstreamFailed,
		ErrorLog:      slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
	}
}

// upstreamFailed answers a request whose upstream did not answer: 504 when
// it timed out, 502 otherwise.
func (p *Proxy) upstreamFailed(w http.ResponseWriter, r *http.Request, err error) {
	f := forwardOf(r.Context())
	var te *timeoutError
	switch {
	case errors.As(err, &te):
		p.timedOut(f, te)
		http.Error(w, "upstream timed out", http.StatusGatewayTimeout)
	case r.Context().Err() != nil:
		// The client went away (or the server is stopping): the upstream
		// did nothing wrong and nobody reads the answer.
		p.metrics.requests.WithLabelValues("canceled").Inc()
		p.log.Debug("request canceled before the upstream answered", "route", f.route, "upstream", f.upstream, "path", f.path, "err", err)
		http.Error(w, "request canceled", http.StatusBadGateway)
	default:
		p.metrics.requests.WithLabelValues("upstream_error").Inc()
		p.log.Warn("upstream failed", "route", f.route, "upstream", f.upstream, "path", f.path, "err", err)
		http.Error(w, "upstream error", http.StatusBadGateway)
	}
}

// timedOut logs and counts a timeout, once per request.
func (p *Proxy) timedOut(f *forward, te *timeoutError) {
	p.metrics.requests.WithLabelValues("upstream_timeout").Inc()
	p.log.Warn("upstream timed out", "route", f.route, "upstream", f.upstream, "path", f.path,
		"timeout", te.timeout, "after", te.after)
}

// timeoutError is an upstream that kept the proxy waiting too long.
type timeoutError struct {
	timeout string // which: "connect", "response_header" or "idle", as the route's fields
	after   time.Duration
}

func (e *timeoutError) Error() string {
	return fmt.Sprintf("upstream %s timeout (%s)", e.timeout, e.after)
}

// Timeout marks it a timeout, as net.Error does.
func (e *timeoutError) Timeout() bool { return true }

// dialUpstream opens a connection within the connect timeout of the forward
// that asked for it (the transport passes its context's values on).
func (p *Proxy) dialUpstream(ctx context.Context, network, addr string) (net.Conn, error) {
	d := time.Duration(p.timeouts.Connect)
	if f := forwardOf(ctx); f != nil {
		d = time.Duration(f.timeouts.Connect)
	}
	te := &timeoutError{timeout: "connect", after: d}
	dctx, cancel := context.WithTimeoutCause(ctx, d, te)
	defer cancel() // a connection, once made, outlives its dial context
	conn, err := p.dial(dctx, network, addr)
	if err != nil && errors.Is(context.Cause(dctx), te) {
		return nil, fmt.Errorf("dial %s %s: %w", network, addr, te)
	}
	return conn, err
}

// transport times the waits of its base's round trips for the forward of
// each request: the response header, and then each read of the body. It
// cancels a request that waits too long, with a *timeoutError as the cause.
type transport struct {
	p    *Proxy
	base http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	f := forwardOf(req.Context())
	ctx, cancel := context.WithCancelCause(req.Context())
	wd := &watchdog{cancel: cancel, header: time.Duration(f.timeouts.ResponseHeader), idle: time.Duration(f.timeouts.Idle)}
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { wd.connected() }})
	out := req.WithContext(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		out.Body = &sendBody{ReadCloser: req.Body, wd: wd}
	}
	resp, err := t.base.RoundTrip(out)
	wd.answered()
	if err != nil {
		wd.stop()
		if te := wd.expired(); te != nil {
			return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), te)
		}
		return nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// An upgraded connection (a WebSocket) is the client's and the
		// upstream's, untimed; its body must stay the connection itself.
		// Its context ends with the client's request.
		return resp, nil
	}
	resp.Body = &recvBody{ReadCloser: resp.Body, wd: wd, timedOut: func(te *timeoutError) { t.p.timedOut(f, te) }}
	return resp, nil
}

// phase is what a request waits for.
type phase int

const (
	connecting phase = iota // a connection: the dialer times that
	waiting                 // the response header, once the request is being sent
	receiving               // the response body
	done
)

// watchdog cancels a request that waits on its upstream for too long: for
// the response header, from when the request is being sent (the clock
// stops while the request's own body is read from the client, and restarts
// after each read); then for each read of the response body.
type watchdog struct {
	cancel       context.CancelCauseFunc
	header, idle time.Duration

	mu       sync.Mutex // protects what follows
	phase    phase
	timer    *time.Timer   // calls fire; made on first use
	armed    *timeoutError // what the timer firing now would mean; nil: disarmed
	deadline time.Time     // when the armed wait ends (a timer that fires before is stale)
	fired    *timeoutError // the cause it cancelled the request with
}

// arm starts timing a wait; w.mu is held.
func (w *watchdog) arm(timeout string, d time.Duration) {
	w.armed, w.deadline = &timeoutError{timeout: timeout, after: d}, time.Now().Add(d)
	if w.timer == nil {
		w.timer = time.AfterFunc(d, w.fire)
	} else {
		w.timer.Reset(d)
	}
}

// disarm stops timing; w.mu is held.
func (w *watchdog) disarm() {
	w.armed = nil
	if w.timer != nil {
		w.timer.Stop()
	}
}

func (w *watchdog) fire() {
	w.mu.Lock()
	if w.armed == nil || time.Now().Before(w.deadline) {
		w.mu.Unlock()
		return // disarmed, or armed again, since the timer was set
	}
	te := w.armed
	w.fired, w.armed = te, nil
	w.mu.Unlock()
	w.cancel(te)
}

// in runs f with w.mu held if the request is in phase ph.
func (w *watchdog) in(ph phase, f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.phase == ph {
		f()
	}
}

// connected: a connection is there and the request goes out on it.
func (w *watchdog) connected() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.phase <= waiting { // waiting already: a retry on a new connection
		w.phase = waiting
		w.arm("response_header", w.header)
	}
}

// answered: the round trip is over, with a response or an error.
func (w *watchdog) answered() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.phase = receiving
	w.disarm()
}

// stop: the request is over.
func (w *watchdog) stop() {
	w.mu.Lock()
	w.phase = done
	w.disarm()
	w.mu.Unlock()
	w.cancel(nil)
}

// expired returns the timeout that cancelled the request, if one did.
func (w *watchdog) expired() *timeoutError {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fired
}

// sendBody is a request body on its way upstream.
type sendBody struct {
	io.ReadCloser
	wd *watchdog
}

func (b *sendBody) Read(p []byte) (int, error) {
	b.wd.in(waiting, b.wd.disarm) // waiting on the client, not the upstream
	n, err := b.ReadCloser.Read(p)
	b.wd.in(waiting, func() { b.wd.arm("response_header", b.wd.header) })
	return n, err
}

// recvBody is a response body on its way to the client.
type recvBody struct {
	io.ReadCloser
	wd       *watchdog
	timedOut func(*timeoutError) // logs it
	once     sync.Once
}

func (b *recvBody) Read(p []byte) (int, error) {
	b.wd.in(receiving, func() { b.wd.arm("idle", b.wd.idle) })
	n, err := b.ReadCloser.Read(p)
	b.wd.in(receiving, b.wd.disarm)
	if err != nil && err != io.EOF {
		if te := b.wd.expired(); te != nil {
			b.once.Do(func() { b.timedOut(te) })
			// The headers are gone: all the reverse proxy can do is
			// abort the response. It would log this error again, as it
			// logs any but context.Canceled; it is logged, once, above.
			return n, context.Canceled
		}
	}
	return n, err
}

func (b *recvBody) Close() error {
	err := b.ReadCloser.Close()
	b.wd.stop()
	return err
}
