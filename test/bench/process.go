package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// serverProcess is a server the benchmark runs as a child process (the
// walwatch binary's cp, kine), its output appended to a log file in the
// run's temp dir.
type serverProcess struct {
	name    string // for messages: "cp", "kine"
	logPath string

	cmd  *exec.Cmd
	exit chan error // Wait's result; a reader puts it back for the next
}

func (p *serverProcess) running() bool { return p.cmd != nil }

func (p *serverProcess) pids() []int {
	if p.cmd == nil {
		return nil
	}
	return []int{p.cmd.Process.Pid}
}

// start runs bin with args. It does not wait for the server to be ready:
// that is await's job.
func (p *serverProcess) start(bin string, args ...string) error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("%s log: %w", p.name, err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a Ctrl-C reaches it only through us, and
	// killed if we die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd, p.exit = cmd, make(chan error, 1)
	go func() { p.exit <- cmd.Wait() }()
	return nil
}

// await calls ready every 20 ms until it succeeds, for at most 30 s, and
// says why not if the process exits or the time runs out first. It leaves
// the process running either way: the caller knows how to stop it.
func (p *serverProcess) await(ctx context.Context, what string, ready func(context.Context) error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case exitErr := <-p.exit:
			p.exit <- exitErr
			return fmt.Errorf("%s exited: %v\n%s", p.name, exitErr, p.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not ready within 30s: %v\n%s", p.name, what, err, p.logTail())
		}
	}
}

// stop sends SIGTERM and waits for the process to exit, sending SIGKILL
// after 10s.
func (p *serverProcess) stop() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exit:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exit
	}
	p.cmd = nil
}

// logTail is the last 20 lines of the log, to say why a start failed.
func (p *serverProcess) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// getOK asks url with GET and fails unless it answers 200: whether a
// server says it is ready.
func getOK(ctx context.Context, hc *http.Client, url string) error {
	_, err := getBody(ctx, hc, url)
	return err
}

// maxGetBody bounds what getBody reads of an answer: a server's /metrics,
// or a heap profile it is asked for only to collect its garbage.
const maxGetBody = 64 << 20

// getBody asks url with GET and returns the answer's body, failing unless
// it answers 200.
func getBody(ctx context.Context, hc *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxGetBody))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, err
}
