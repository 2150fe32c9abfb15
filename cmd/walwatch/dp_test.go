package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/walwatch/walwatch/test/pgtest"
)

// A single-node data plane with a hub of its own: routes written to the
// table (here by the CLI) reach it without a control plane.
func TestDPStraightFromPostgres(t *testing.T) {
	url := pgtest.NewDatabase(t)
	if _, err := run(t, url, "migrate"); err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "from upstream "+r.URL.Path) }))
	defer up.Close()
	if _, err := run(t, url, "put", "/routes/early", `{"uri": "/early", "upstream": "`+up.URL+`"}`); err != nil {
		t.Fatal(err)
	}

	g := &globals{postgres: url, output: "table", stdout: io.Discard, stderr: io.Discard}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- runDP(ctx, g, g.logger(), dpOptions{listen: "127.0.0.1:0", adminListen: "127.0.0.1:0",
			ready: func(p, _ net.Addr) { addr <- "http://" + p.String() }})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dp: %v", err)
		}
	}()
	dp := <-addr
	eventually := func(path, want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := http.Get(dp + path)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if strings.Contains(string(b), want) {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s never answered %q", path, want)
			}
			time.Sleep(5 * time.Millisecond) // polling interval
		}
	}
	eventually("/early", "from upstream /early") // loaded at start
	if _, err := run(t, url, "put", "/routes/late", `{"uri": "/late/*", "upstream": "`+up.URL+`"}`); err != nil {
		t.Fatal(err)
	}
	eventually("/late/x", "from upstream /late/x") // followed by the watch
	if _, err := run(t, url, "del", "/routes/early"); err != nil {
		t.Fatal(err)
	}
	eventually("/early", "no route")
}

// The upstream timeout flags take durations above 0 and at most a day; dp
// refuses anything else before it connects to anything.
func TestDPUpstreamTimeoutFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--upstream-connect-timeout", "0"},
		{"--upstream-response-header-timeout", "-1s"},
		{"--upstream-idle-timeout", "25h"},
	} {
		_, err := run(t, "postgres://nobody@127.0.0.1:1/none", append([]string{"dp", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, args...)...)
		if err == nil || !strings.Contains(err.Error(), args[0]+" ") || !strings.Contains(err.Error(), "must be above 0") {
			t.Errorf("dp %s: %v, want it refused", strings.Join(args, " "), err)
		}
	}
}
