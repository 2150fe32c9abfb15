package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/walwatch/walwatch/store"
)

func newCompactCommand(g *globals) *cobra.Command {
	var (
		rev        int64
		olderThan  time.Duration
		keepLatest bool
	)
	cmd := &cobra.Command{
		Use:   "compact (--revision N | --older-than 72h | --keep-latest)",
		Short: "Remove history: reads below the compacted revision then fail",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			set := 0
			for _, f := range []string{"revision", "older-than", "keep-latest"} {
				if cmd.Flags().Changed(f) {
					set++
				}
			}
			if set != 1 {
				return errors.New("compact needs exactly one of --revision, --older-than, --keep-latest")
			}
			return g.withStore(cmd.Context(), func(s *store.Store) error {
				var (
					res store.CompactResponse
					err error
				)
				switch {
				case cmd.Flags().Changed("revision"):
					res, err = s.Compact(cmd.Context(), rev)
				case cmd.Flags().Changed("older-than"):
					res, err = s.CompactOlderThan(cmd.Context(), olderThan)
				default:
					res, err = s.CompactKeepLatest(cmd.Context())
				}
				if err != nil {
					return err
				}
				return g.print(map[string]int64{"compact_revision": res.CompactRevision, "removed": res.Removed}, func(w io.Writer) {
					fmt.Fprintf(w, "compacted at revision %d, %d rows removed\n", res.CompactRevision, res.Removed)
				})
			})
		},
	}
	cmd.Flags().Int64Var(&rev, "revision", 0, "compact at this revision")
	cmd.Flags().DurationVar(&olderThan, "older-than", 0, "compact history older than this age, e.g. 72h")
	cmd.Flags().BoolVar(&keepLatest, "keep-latest", false, "keep only the newest version of each key")
	return cmd
}
