package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/walwatch/walwatch/cmd/walwatch/internal/httpapi"
	"github.com/walwatch/walwatch/store"
)

// The lease commands are etcdctl's: the same subcommands, arguments and
// lines, lease IDs in hex both ways. -o json prints what the HTTP API
// answers, the ID as a number and as etcdctl's hex string.

func newLeaseCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lease",
		Short: "Grant, keep alive, revoke and inspect leases, as etcdctl lease does",
		Long: `A lease is a TTL its owner renews: keys put with it (etcdctl put --lease, PUT
/v1/kv/KEY?lease=ID, walwatch.put(key, value, lease) in SQL) are deleted
together, in one revision, when it is revoked or expires. Lease IDs are hexadecimal, as
etcdctl prints and takes them; -o json gives each as "id" (a number) and
"id_hex".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	cmd.AddCommand(
		newLeaseGrantCommand(g),
		newLeaseKeepAliveCommand(g),
		newLeaseRevokeCommand(g),
		newLeaseListCommand(g),
		newLeaseTimeToLiveCommand(g),
	)
	return cmd
}

// parseLeaseArg reads a lease ID as etcdctl does, in hex ("694d77aa9e38260f",
// or with 0x), refusing a negative one.
func parseLeaseArg(s string) (int64, error) {
	hex := s
	if rest, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		hex = rest
	}
	id, err := strconv.ParseInt(hex, 16, 64)
	if err != nil || id < 0 || strings.HasPrefix(hex, "+") {
		return 0, fmt.Errorf("bad lease ID %q: expecting an ID in hex, as etcdctl prints it (694d77aa9e38260f)", s)
	}
	return id, nil
}

func newLeaseGrantCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "grant TTL",
		Short: "Create a lease of TTL seconds",
		Long: fmt.Sprintf(`grant creates a lease of TTL seconds (one below %d is raised to %d, as
etcd does) with an ID the database picks, and prints it in hex.`, store.MinLeaseTTL, store.MinLeaseTTL),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ttl, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || ttl < 0 {
				return fmt.Errorf("bad TTL %q: expecting seconds, a non-negative integer", args[0])
			}
			return g.withStore(cmd.Context(), func(s *store.Store) error {
				l, err := s.Grant(cmd.Context(), ttl, 0)
				if err != nil {
					return err
				}
				return g.print(httpapi.NewLease(l, false, false), func(w io.Writer) {
					fmt.Fprintf(w, "lease %016x granted with TTL(%ds)\n", l.ID, l.TTL)
				})
			})
		},
	}
}

func newLeaseRevokeCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a lease: its keys are deleted in one revision",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseLeaseArg(args[0])
			if err != nil {
				return err
			}
			return g.withStore(cmd.Context(), func(s *store.Store) error {
				res, err := s.Revoke(cmd.Context(), id)
				if errors.Is(err, store.ErrLeaseNotFound) {
					return fmt.Errorf("revoke lease %016x: %w", id, store.ErrLeaseNotFound)
				}
				if err != nil {
					return err
				}
				return g.print(map[string]int64{"revision": res.Revision, "deleted": res.Deleted}, func(w io.Writer) {
					fmt.Fprintf(w, "lease %016x revoked\n", id)
				})
			})
		},
	}
}

func newLeaseListCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every lease",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStore(cmd.Context(), func(s *store.Store) error {
				ids, err := s.Leases(cmd.Context())
				if err != nil {
					return err
				}
				out := struct {
					Leases []httpapi.LeaseRef `json:"leases"`
				}{make([]httpapi.LeaseRef, len(ids))}
				for i, id := range ids {
					out.Leases[i] = httpapi.LeaseRef{ID: id, IDHex: httpapi.LeaseIDHex(id)}
				}
				return g.print(out, func(w io.Writer) {
					fmt.Fprintf(w, "found %d leases\n", len(ids))
					for _, id := range ids {
						fmt.Fprintf(w, "%016x\n", id)
					}
				})
			})
		},
	}
}

func newLeaseTimeToLiveCommand(g *globals) *cobra.Command {
	var keys bool
	cmd := &cobra.Command{
		Use:   "timetolive ID",
		Short: "Print a lease's granted TTL, the seconds it has left and, with --keys, its keys",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseLeaseArg(args[0])
			if err != nil {
				return err
			}
			return g.withStore(cmd.Context(), func(s *store.Store) error {
				l, ok, err := s.TimeToLive(cmd.Context(), id, keys)
				if err != nil {
					return err
				}
				if !ok {
					// etcd's answer for a lease that is gone: granted TTL 0,
					// TTL -1.
					out := httpapi.NewLease(store.Lease{ID: id, Remaining: -1}, true, false)
					return g.print(out, func(w io.Writer) {
						fmt.Fprintf(w, "lease %016x already expired\n", id)
					})
				}
				return g.print(httpapi.NewLease(l, true, keys), func(w io.Writer) {
					fmt.Fprintf(w, "lease %016x granted with TTL(%ds), remaining(%ds)", l.ID, l.TTL, l.Remaining)
					if keys {
						ks := make([]string, len(l.Keys))
						for i, k := range l.Keys {
							ks[i] = string(k) // bytes as they are, as etcdctl prints them
						}
						fmt.Fprintf(w, ", attached keys(%v)", ks)
					}
					fmt.Fprintln(w)
				})
			})
		},
	}
	cmd.Flags().BoolVar(&keys, "keys", false, "print the keys attached to the lease")
	return cmd
}

// keepAliveRetry is how soon keep-alive tries again after PostgreSQL failed
// to answer one: well inside the two thirds of a TTL left at that point.
var keepAliveRetry = 500 * time.Millisecond

func newLeaseKeepAliveCommand(g *globals) *cobra.Command {
	var once bool
	cmd := &cobra.Command{
		Use:   "keep-alive ID",
		Short: "Renew a lease every third of its TTL until interrupted (--once: once)",
		Long: `keep-alive renews the lease to its full TTL, then again every third of it,
printing each renewal, until interrupted or until the lease is gone (expired
or revoked), as etcdctl lease keep-alive does; it exits 0 then too, as
etcdctl does. With --once it renews once, and fails if the lease is gone.
While PostgreSQL does not answer it retries, saying so on stderr.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseLeaseArg(args[0])
			if err != nil {
				return err
			}
			return g.withStore(cmd.Context(), func(s *store.Store) error {
				return g.keepAlive(cmd.Context(), s, id, once)
			})
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "renew once and exit")
	return cmd
}

// keepAlive renews lease id until ctx ends or the lease is gone.
func (g *globals) keepAlive(ctx context.Context, s *store.Store, id int64, once bool) error {
	failing := false // since the last renewal, so an outage is said once
	for {
		ttl, err := s.KeepAlive(ctx, id)
		switch {
		case ctx.Err() != nil:
			return nil // interrupted
		case err != nil && !once && transient(err):
			if !failing {
				fmt.Fprintf(g.stderr, "walwatch: keep lease %016x alive: %v; retrying every %v\n", id, err, keepAliveRetry)
				failing = true
			}
			if !sleep(ctx, keepAliveRetry) {
				return nil
			}
			continue
		case err != nil:
			return err
		case ttl == 0 && once:
			return fmt.Errorf("keep lease %016x alive: %w (expired or revoked)", id, store.ErrLeaseNotFound)
		}
		failing = false
		if err := g.print(httpapi.NewLease(store.Lease{ID: id, TTL: ttl}, false, false), func(w io.Writer) {
			if ttl == 0 {
				fmt.Fprintf(w, "lease %016x expired or revoked.\n", id)
			} else {
				fmt.Fprintf(w, "lease %016x keepalived with TTL(%d)\n", id, ttl)
			}
		}); err != nil {
			return err
		}
		if ttl == 0 || once {
			return nil
		}
		if !sleep(ctx, time.Duration(ttl)*time.Second/3) { // as etcd's client renews
			return nil
		}
	}
}

// transient reports whether err says PostgreSQL could not answer for now:
// worth another try.
func transient(err error) bool {
	return errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrAborted) || errors.Is(err, context.DeadlineExceeded)
}

// sleep waits d, or until ctx ends: false then.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
