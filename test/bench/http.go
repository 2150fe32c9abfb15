package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/walwatch/walwatch/wire"
)

// httpSlot is walwatch_http's replication slot.
const httpSlot = "benchcp"

// httpSystem is walwatch as users of the control plane see it: the
// walwatch binary's cp as a subprocess, writes and reads through its HTTP
// API, the watcher on its Server-Sent Events stream.
type httpSystem struct {
	cp     *cpProcess
	client *http.Client // keeps up to maxClients connections open
	stream *http.Client // for the watch stream: no timeout
}

func newHTTPSystem(e *env) *httpSystem {
	tr := &http.Transport{MaxIdleConns: 2 * maxClients, MaxIdleConnsPerHost: 2 * maxClients, DisableCompression: true}
	return &httpSystem{
		cp:     newCPProcess(e, httpSlot, "cp.log"),
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		stream: &http.Client{Transport: &http.Transport{DisableCompression: true}},
	}
}

func (s *httpSystem) name() string { return "walwatch_http" }
func (s *httpSystem) pids() []int  { return s.cp.pids() }

// begin starts the control plane, its etcd API off and its keyspace copy
// on, as walwatch_etcd's, and waits until it is ready.
func (s *httpSystem) begin(ctx context.Context) error {
	return s.cp.start(ctx, "--etcd-listen", "", "--keyspace-copy")
}

// end stops the control plane and drops its slot.
func (s *httpSystem) end(ctx context.Context) error {
	s.client.CloseIdleConnections()
	return s.cp.stop(ctx)
}

func (s *httpSystem) do(ctx context.Context, method, path string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, s.cp.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	return nil
}

// noop is GET /healthz, which cp answers without PostgreSQL.
func (s *httpSystem) noop(ctx context.Context, _ int) error {
	return s.do(ctx, http.MethodGet, "/healthz", nil)
}

// put and get use /v1/kv/{key...}, whose path is the key without its
// leading slash.
func (s *httpSystem) put(ctx context.Context, _ int, key, value []byte) error {
	return s.do(ctx, http.MethodPut, "/v1/kv"+string(key), value)
}

func (s *httpSystem) get(ctx context.Context, _ int, key []byte) error {
	return s.do(ctx, http.MethodGet, "/v1/kv"+string(key), nil)
}

// watch reads the SSE stream of /v1/watch?prefix=P. The cp registers the
// watch before it sends the response headers, so once they are here no
// later write can be missed.
func (s *httpSystem) watch(ctx context.Context, prefix string, fn func(key []byte)) (func() error, error) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	req, err := http.NewRequestWithContext(wctx, http.MethodGet, s.cp.base+"/v1/watch?prefix="+url.QueryEscape(prefix), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	resp, err := s.stream.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("watch: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	done := make(chan error, 1)
	go func() {
		defer resp.Body.Close()
		err := readSSE(resp.Body, fn)
		if wctx.Err() != nil {
			err = nil
		}
		done <- err
	}()
	return func() error {
		cancel()
		if err := <-done; err != nil {
			return fmt.Errorf("watch stream: %w", err)
		}
		return nil
	}, nil
}

// readSSE reads an event stream until it ends, calling fn with the key of
// each event of every put, delete and txn message.
func readSSE(r io.Reader, fn func(key []byte)) error {
	rd := wire.NewReader(r)
	for {
		m, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return errors.New("stream ended")
		}
		if err != nil {
			return err
		}
		switch m.Event {
		case "put", "delete", "txn":
			evs, err := m.Events()
			if err != nil {
				return fmt.Errorf("%s data: %w", m.Event, err)
			}
			for _, ev := range evs {
				fn([]byte(ev.Key))
			}
		case "compacted":
			return fmt.Errorf("watch compacted: %s", m.Data)
		}
	}
}
