package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/walwatch/walwatch/cmd/walwatch/internal/etcdapi"
	"github.com/walwatch/walwatch/cmd/walwatch/internal/upstream"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/test/pgcluster"
)

type demoOptions struct {
	dataDir    string
	withCP     bool
	cpListen   string
	etcdListen string
	dpListen   string
	dpAdmin    string
	upstreams  [2]string
}

func newDemoCommand(g *globals) *cobra.Command {
	o := demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run everything on a private PostgreSQL: cp, dp, two upstreams, and print a walkthrough",
		Long: `demo starts a private PostgreSQL (initdb in a temporary directory, removed on
exit, unless --data-dir), migrates it, and runs a control plane (with etcd's
v3 API on --etcd-listen), a data plane that follows it, and two built-in
echo upstreams, then prints the curl, etcdctl and Go commands of a
walkthrough. Ctrl-C stops everything. With --postgres it uses that server
instead of a private one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			url := ""
			if cmd.Flags().Changed("postgres") {
				url = g.postgres
			}
			return runDemo(cmd.Context(), g, url, o)
		},
	}
	cmd.Flags().StringVar(&o.dataDir, "data-dir", "", "keep the private PostgreSQL's data here (default: a temporary directory, removed on exit)")
	cmd.Flags().BoolVar(&o.withCP, "cp", true, "run the control plane too (--cp=false: run it yourself with walwatch cp, e.g. to restart it)")
	cmd.Flags().StringVar(&o.cpListen, "cp-listen", defaultCPListen, "control plane address")
	cmd.Flags().StringVar(&o.etcdListen, "etcd-listen", defaultEtcdListen, `the control plane's etcd API address ("" turns it off)`)
	cmd.Flags().StringVar(&o.dpListen, "dp-listen", "127.0.0.1:9080", "data plane address")
	cmd.Flags().StringVar(&o.dpAdmin, "dp-admin-listen", "127.0.0.1:9081", "data plane admin address")
	cmd.Flags().StringVar(&o.upstreams[0], "upstream-a", "127.0.0.1:9380", "address of the first built-in upstream")
	cmd.Flags().StringVar(&o.upstreams[1], "upstream-b", "127.0.0.1:9381", "address of the second built-in upstream")
	return cmd
}

func runDemo(ctx context.Context, g *globals, url string, o demoOptions) error {
	log := g.logger()
	private := url == ""
	if private {
		cluster, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: o.dataDir, Logger: log.With("component", "postgres")})
		if err != nil {
			if errors.Is(err, pgcluster.ErrNoServerBinaries) {
				return fmt.Errorf("%w\nor run the demo on a PostgreSQL of your own (wal_level=logical): walwatch demo --postgres URL", err)
			}
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := cluster.Stop(sctx); err != nil {
				log.Warn("stop private PostgreSQL", "err", err)
			}
		}()
		if url, err = cluster.CreateDatabase(ctx, "walwatch"); err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42P04" { // duplicate_database: a kept --data-dir
				return err
			}
			url = cluster.ConnString("walwatch")
		}
	}
	g.postgres = url
	pool, err := g.poolOf(ctx, serverPoolSize)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := sql.Migrate(ctx, pool); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		errs = make(chan error, 5)
	)
	run := func(fn func() error) {
		wg.Go(func() {
			if err := fn(); err != nil {
				errs <- err
				cancel()
			}
		})
	}
	// Print the addresses really bound, so port 0 (tests) works too.
	addrs := demoAddrs{}
	for i, addr := range o.upstreams {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("upstream: listen on %s: %w", addr, err)
		}
		addrs.upstreams[i] = "http://" + ln.Addr().String()
		srv := &http.Server{Handler: upstream.Handler(fmt.Sprintf("upstream-%c", 'a'+i)), ReadHeaderTimeout: 10 * time.Second}
		run(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		context.AfterFunc(ctx, func() { srv.Close() })
	}
	cpReady, dpReady := make(chan string, 1), make(chan [2]string, 1)
	etcdReady := make(chan string, 1)
	if o.withCP {
		// A temporary slot: nothing stays behind on a server of your own.
		etcd := etcdOptions{listen: o.etcdListen, name: "demo", progress: etcdapi.DefaultProgressInterval,
			emulatedVersion: etcdapi.DefaultEmulatedVersion, ready: func(a net.Addr) { etcdReady <- a.String() }}
		run(func() error {
			return runCP(ctx, log.With("program", "cp"), pool, cpOptions{listen: o.cpListen, progress: replication.DefaultProgressInterval,
				etcd: etcd, ready: func(a net.Addr) { cpReady <- "http://" + a.String() }})
		})
	} else {
		cpReady <- "http://" + o.cpListen
		etcdReady <- o.etcdListen // your cp's, if you keep its default
		addrs.cpCommand = cpCommand(url, o.cpListen, o.etcdListen)
	}
	select {
	case addrs.cp = <-cpReady:
		if o.etcdListen != "" {
			addrs.etcd = <-etcdReady // bound before the control plane's API
		}
	case <-ctx.Done():
	}
	run(func() error {
		return runDP(ctx, g, log.With("program", "dp"), dpOptions{listen: o.dpListen, adminListen: o.dpAdmin,
			cp: addrs.cp, idleTimeout: 3*replication.DefaultProgressInterval + time.Second,
			ready: func(p, a net.Addr) { dpReady <- [2]string{"http://" + p.String(), "http://" + a.String()} }})
	})
	select {
	case dp := <-dpReady:
		addrs.dp, addrs.dpAdmin = dp[0], dp[1]
		printWalkthrough(g.stdout, url, private, o.dataDir, addrs)
	case <-ctx.Done():
	}
	<-ctx.Done()
	wg.Wait()
	close(errs)
	return <-errs // nil when every part stopped cleanly
}

// demoAddrs are the demo's addresses as URLs.
type demoAddrs struct {
	cp, dp, dpAdmin string
	etcd            string // host:port of the etcd API; "": off
	upstreams       [2]string
	cpCommand       string // how to start the control plane; "": the demo runs it
}

// cpCommand is the command that starts the control plane the demo's data
// plane and walkthrough expect, for --cp=false.
func cpCommand(url, listen, etcdListen string) string {
	cmd := "walwatch cp --postgres '" + url + "'"
	if listen != defaultCPListen {
		cmd += " --listen " + listen
	}
	if etcdListen != defaultEtcdListen {
		cmd += " --etcd-listen '" + etcdListen + "'"
	}
	return cmd
}

func printWalkthrough(w io.Writer, url string, private bool, dataDir string, a demoAddrs) {
	where := "(yours)"
	if private {
		where = "(private; removed on exit)"
		if dataDir != "" {
			where = "(private; data kept in " + dataDir + ")"
		}
	}
	cpLine := a.cp + "\n"
	if a.cpCommand != "" {
		cpLine = a.cp + "  (not started: run " + a.cpCommand + ")\n"
	}
	etcdLine := ""
	if a.etcd != "" {
		etcdLine = "  etcd API       http://" + a.etcd + "  (etcdctl, the etcd Go client, Kubernetes)\n"
	}
	fmt.Fprintf(w, `
walwatch demo is running.
  PostgreSQL     %s  %s
  control plane  %[9]s%[8]s  data plane     %[4]s  (admin: %[5]s/metrics)
  upstreams      %[6]s (upstream-a), %[7]s (upstream-b)

The walkthrough, in another terminal:

  curl -i %[4]s/get                  # 404 no route
  curl -X PUT %[3]s/routes/foo -d '{"uri": "/get", "upstream": "%[6]s"}'
  curl -i %[4]s/get                  # proxied to upstream-a
  curl -X PUT %[3]s/routes/bar -d '{"uri": "/anything/*", "upstream": "%[6]s"}'
  curl -i %[4]s/anything/x           # prefix route
  curl -X PUT %[3]s/routes/foo -d '{"uri": "/get", "upstream": "%[7]s"}'
  curl -i %[4]s/get                  # now upstream-b
  curl %[3]s/routes/foo              # the route, its revisions and version
  curl '%[3]s/routes/foo?rev=2'      # as it was at revision 2
  curl -X DELETE %[3]s/routes/bar
  curl -i %[4]s/anything/x           # 404 no route again
  curl -N '%[3]s/v1/watch?prefix=/routes/&rev=1'   # every change, as Server-Sent Events
  psql '%[1]s' -c "select walwatch.set('/routes/sql', '{\"uri\": \"/sql\", \"upstream\": \"%[6]s\"}')"
`, url, where, a.cp, a.dp, a.dpAdmin, a.upstreams[0], a.upstreams[1], etcdLine, cpLine)
	if a.etcd != "" {
		fmt.Fprintf(w, `
etcd's v3 API serves the same keys on %[1]s: etcdctl (v3.7; the README says
how to build it), the etcd Go client and Kubernetes work unchanged.

  etcdctl --endpoints %[1]s put /routes/baz '{"uri": "/baz", "upstream": "%[3]s"}'
  curl -i %[2]s/baz                  # the data plane follows a write made through etcd's API
  etcdctl --endpoints %[1]s get /routes/ --prefix
  etcdctl --endpoints %[1]s watch /routes/ --prefix --rev 1
  etcdctl --endpoints %[1]s endpoint status -w table

From Go, with go.etcd.io/etcd/client/v3:

  cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"%[1]s"}})
  resp, err := cli.Get(ctx, "/routes/", clientv3.WithPrefix())
  for wr := range cli.Watch(ctx, "/routes/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
      for _, ev := range wr.Events {
          fmt.Println(ev.Type, string(ev.Kv.Key), string(ev.Kv.Value))
      }
  }
`, a.etcd, a.dp, a.upstreams[0])
	}
	fmt.Fprint(w, "\nCtrl-C stops everything.\n")
}
