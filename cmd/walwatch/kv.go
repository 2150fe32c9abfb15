package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spf13/cobra"

	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/wire"
)

func newMigrateCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the walwatch schema",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withPool(cmd.Context(), func(pool *pgxpool.Pool) error {
				res, err := sql.Migrate(cmd.Context(), pool)
				if err != nil {
					return err
				}
				return g.print(map[string]int{"from_version": res.From, "version": res.To}, func(w io.Writer) {
					if res.From == res.To {
						fmt.Fprintf(w, "schema is up to date at version %d\n", res.To)
					} else {
						fmt.Fprintf(w, "schema migrated from version %d to %d\n", res.From, res.To)
					}
				})
			})
		},
	}
}

func newPutCommand(g *globals) *cobra.Command {
	var lease string
	cmd := &cobra.Command{
		Use:   "put KEY VALUE",
		Short: "Set a key",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseLeaseArg(lease)
			if err != nil {
				return err
			}
			return g.withStore(cmd.Context(), func(s *store.Store) error {
				res, err := s.PutLease(cmd.Context(), []byte(args[0]), []byte(args[1]), id)
				if errors.Is(err, store.ErrLeaseNotFound) {
					return fmt.Errorf("put %q with lease %016x: %w", args[0], id, store.ErrLeaseNotFound)
				}
				if err != nil {
					return err
				}
				return g.print(map[string]int64{"revision": res.Revision}, func(w io.Writer) {
					fmt.Fprintf(w, "OK, revision %d\n", res.Revision)
				})
			})
		},
	}
	cmd.Flags().StringVar(&lease, "lease", "0", "lease ID (hex, as etcdctl) to attach the key to; 0: none, which detaches it from any")
	return cmd
}

func newGetCommand(g *globals) *cobra.Command {
	var (
		prefix bool
		rev    int64
		limit  int64
	)
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Read a key, or every key with a prefix, at the current or an older revision",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r := keyRange(args[0], prefix)
			return g.withStore(cmd.Context(), func(s *store.Store) error {
				res, err := s.Range(cmd.Context(), store.RangeRequest{KeyRange: r, Revision: rev, Limit: limit})
				if err != nil {
					return err
				}
				out := struct {
					Revision int64     `json:"revision"`
					KVs      []wire.KV `json:"kvs"`
					More     bool      `json:"more"`
				}{Revision: res.Revision, KVs: make([]wire.KV, len(res.KVs)), More: res.More}
				for i, kv := range res.KVs {
					out.KVs[i] = wire.NewKV(kv)
				}
				return g.print(out, func(w io.Writer) {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "KEY\tVALUE\tCREATE_REVISION\tMOD_REVISION\tVERSION")
					for _, kv := range res.KVs {
						fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\n", strconv.Quote(string(kv.Key)), kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version)
					}
					tw.Flush()
					more := ""
					if res.More {
						more = ", more keys past --limit"
					}
					fmt.Fprintf(w, "(%d keys at revision %d%s)\n", len(out.KVs), res.Revision, more)
				})
			})
		},
	}
	cmd.Flags().BoolVar(&prefix, "prefix", false, "read every key that starts with KEY")
	cmd.Flags().Int64Var(&rev, "rev", 0, "revision to read at (0: the current one)")
	cmd.Flags().Int64Var(&limit, "limit", 0, "most keys to return (0: all)")
	return cmd
}

func newDelCommand(g *globals) *cobra.Command {
	var prefix bool
	cmd := &cobra.Command{
		Use:   "del KEY",
		Short: "Delete a key, or every key with a prefix, in one revision",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r := keyRange(args[0], prefix)
			return g.withStore(cmd.Context(), func(s *store.Store) error {
				res, err := s.Delete(cmd.Context(), r)
				if err != nil {
					return err
				}
				return g.print(map[string]int64{"revision": res.Revision, "deleted": res.Deleted}, func(w io.Writer) {
					fmt.Fprintf(w, "%d deleted, revision %d\n", res.Deleted, res.Revision)
				})
			})
		},
	}
	cmd.Flags().BoolVar(&prefix, "prefix", false, "delete every key that starts with KEY")
	return cmd
}

// keyRange is the range a command's KEY argument names: the key, or with
// --prefix every key that starts with it.
func keyRange(key string, prefix bool) store.KeyRange {
	if prefix {
		return store.Prefix([]byte(key))
	}
	return store.Key([]byte(key))
}
