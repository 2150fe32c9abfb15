package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/wire"
)

func newWatchCommand(g *globals) *cobra.Command {
	var (
		prefix bool
		rev    int64
		prevKV bool
	)
	cmd := &cobra.Command{
		Use:   "watch KEY",
		Short: "Print every change to a key or prefix, from now or from a revision, until interrupted",
		Long: `watch prints every change to KEY (or, with --prefix, to every key starting
with it) in revision order, each exactly once, as etcdctl watch does. It reads
its own temporary replication slot, which disappears when watch exits.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r := store.Key([]byte(args[0]))
			if prefix {
				r = store.Prefix([]byte(args[0]))
			}
			return g.watch(cmd.Context(), replication.WatchRequest{Range: r, StartRevision: rev, PrevKV: prevKV})
		},
	}
	cmd.Flags().BoolVar(&prefix, "prefix", false, "watch every key that starts with KEY")
	cmd.Flags().Int64Var(&rev, "rev", 0, "first revision to print (0: changes from now on)")
	cmd.Flags().BoolVar(&prevKV, "prev-kv", false, "print each key's previous value too")
	return cmd
}

func (g *globals) watch(ctx context.Context, req replication.WatchRequest) error {
	if req.StartRevision < 0 {
		return fmt.Errorf("%w: --rev %d: must be 0 (now) or positive", store.ErrInvalidRevision, req.StartRevision)
	}
	client, err := walwatch.Open(ctx, g.connString(),
		walwatch.WithLogger(slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		if ctx.Err() != nil {
			return nil // interrupted before the hub was ready
		}
		return err
	}
	defer client.Close()

	w, err := client.Watch(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	// One write per response, not per line: a busy prefix delivers
	// thousands of events a second, and each write is a system call.
	stdout := bufio.NewWriter(g.stdout)
	enc := json.NewEncoder(stdout)
	for resp := range w.C {
		for _, ev := range resp.Events {
			if g.output == "json" {
				out := wire.FromEvent(ev)
				out.CommitTime = nil // the watch delay is the stream's business
				if err := enc.Encode(out); err != nil {
					return err
				}
				continue
			}
			// etcdctl's format: the type, the key, the value (and the
			// previous value with --prev-kv), a line each, bytes as they are.
			if req.PrevKV && ev.PrevKV != nil {
				fmt.Fprintf(stdout, "%s\n%s\n%s\n%s\n", ev.Type, ev.Key, ev.PrevKV.Value, ev.Value)
			} else {
				fmt.Fprintf(stdout, "%s\n%s\n%s\n", ev.Type, ev.Key, ev.Value)
			}
		}
		if err := stdout.Flush(); err != nil {
			return fmt.Errorf("write events: %w", err)
		}
	}
	if err := w.Err(); err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
		return fmt.Errorf("watch ended: %w", err)
	}
	return nil
}
