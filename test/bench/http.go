package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/wire"
)

// cpSlot is the control plane's replication slot; it is dropped after every
// turn so it never holds WAL while the other systems run.
const cpSlot = "benchcp"

// httpSystem is walwatch as users of the control plane see it: the
// walwatch binary's cp as a subprocess, writes and reads through its HTTP
// API, the watcher on its Server-Sent Events stream.
type httpSystem struct {
	bin, pgURL, logPath string
	admin               *pgxpool.Pool
	client              *http.Client // keeps up to maxClients connections open
	stream              *http.Client // for the watch stream: no timeout

	cmd  *exec.Cmd
	base string // http://127.0.0.1:PORT
	exit chan error
}

func newHTTPSystem(e *env) *httpSystem {
	tr := &http.Transport{MaxIdleConns: 2 * maxClients, MaxIdleConnsPerHost: 2 * maxClients, DisableCompression: true}
	return &httpSystem{
		bin: e.bin, pgURL: e.walwatchURL, logPath: filepath.Join(e.dir, "cp.log"), admin: e.admin,
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		stream: &http.Client{Transport: &http.Transport{DisableCompression: true}},
	}
}

func (s *httpSystem) name() string { return "walwatch_http" }

func (s *httpSystem) pids() []int {
	if s.cmd == nil {
		return nil
	}
	return []int{s.cmd.Process.Pid}
}

// begin starts the control plane and waits until it is ready.
func (s *httpSystem) begin(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("cp log: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(s.bin, "--postgres", s.pgURL, "cp", "--listen", addr, "--slot", cpSlot)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a Ctrl-C reaches it only through us, and
	// killed if we die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start cp: %w", err)
	}
	s.cmd, s.base, s.exit = cmd, "http://"+addr, make(chan error, 1)
	go func() { s.exit <- cmd.Wait() }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/readyz", nil)
		if err != nil {
			return errors.Join(err, s.end(ctx))
		}
		if resp, err := s.client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-s.exit:
			s.exit <- err
			return errors.Join(fmt.Errorf("cp exited: %v\n%s", err, s.logTail()), s.end(ctx))
		case <-ctx.Done():
			return errors.Join(ctx.Err(), s.end(ctx))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.Join(fmt.Errorf("cp not ready within 30s\n%s", s.logTail()), s.end(ctx))
		}
	}
}

// end stops the control plane (SIGTERM, then SIGKILL after 10s) and drops
// its slot.
func (s *httpSystem) end(ctx context.Context) error {
	if s.cmd == nil {
		return nil
	}
	s.client.CloseIdleConnections()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exit:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exit
	}
	s.cmd = nil
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := replication.DropSlot(dctx, s.admin, cpSlot, true); err != nil && !errors.Is(err, replication.ErrSlotNotFound) {
		return fmt.Errorf("drop the cp's slot: %w", err)
	}
	return nil
}

func (s *httpSystem) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

func (s *httpSystem) do(ctx context.Context, method, path string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, bytes.NewReader(body))
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
	req, err := http.NewRequestWithContext(wctx, http.MethodGet, s.base+"/v1/watch?prefix="+url.QueryEscape(prefix), nil)
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
