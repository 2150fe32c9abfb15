package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walwatch/walwatch/replication"
)

// cpProcess is the walwatch binary's control plane (cp) as a subprocess, for
// one system's turn: started by begin, stopped by end. Its replication slot
// is dropped when it stops, so it never holds WAL while the other systems
// run.
type cpProcess struct {
	bin, pgURL, logPath, slot string
	admin                     *pgxpool.Pool
	probe                     *http.Client // for /readyz

	cmd  *exec.Cmd
	base string // http://127.0.0.1:PORT, the HTTP API
	exit chan error
}

// newCPProcess is a cp on slot that logs to logName in the run's temp dir.
func newCPProcess(e *env, slot, logName string) *cpProcess {
	return &cpProcess{
		bin: e.bin, pgURL: e.walwatchURL, logPath: filepath.Join(e.dir, logName), slot: slot, admin: e.admin,
		probe: &http.Client{Timeout: 5 * time.Second},
	}
}

func (p *cpProcess) pids() []int {
	if p.cmd == nil {
		return nil
	}
	return []int{p.cmd.Process.Pid}
}

// start runs cp with its HTTP API on a free port and args after its own,
// and waits until /readyz says the hub serves.
func (p *cpProcess) start(ctx context.Context, args ...string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("cp log: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(p.bin, append([]string{"--postgres", p.pgURL, "cp", "--listen", addr, "--slot", p.slot}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a Ctrl-C reaches it only through us, and
	// killed if we die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start cp: %w", err)
	}
	p.cmd, p.base, p.exit = cmd, "http://"+addr, make(chan error, 1)
	go func() { p.exit <- cmd.Wait() }()

	return p.await(ctx, "/readyz", func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := p.probe.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s", resp.Status)
		}
		return nil
	})
}

// await calls ready every 20 ms until it succeeds, for at most 30 s; if the
// cp exits or the time runs out first, it stops the cp and says why.
func (p *cpProcess) await(ctx context.Context, what string, ready func(context.Context) error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case exitErr := <-p.exit:
			p.exit <- exitErr
			return errors.Join(fmt.Errorf("cp exited: %v\n%s", exitErr, p.logTail()), p.stop(ctx))
		case <-ctx.Done():
			return errors.Join(ctx.Err(), p.stop(ctx))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.Join(fmt.Errorf("cp: %s not ready within 30s: %v\n%s", what, err, p.logTail()), p.stop(ctx))
		}
	}
}

// stop stops the cp (SIGTERM, then SIGKILL after 10s) and drops its slot.
func (p *cpProcess) stop(ctx context.Context) error {
	if p.cmd == nil {
		return nil
	}
	p.probe.CloseIdleConnections()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exit:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exit
	}
	p.cmd = nil
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := replication.DropSlot(dctx, p.admin, p.slot, true); err != nil && !errors.Is(err, replication.ErrSlotNotFound) {
		return fmt.Errorf("drop the cp's slot: %w", err)
	}
	return nil
}

func (p *cpProcess) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}
