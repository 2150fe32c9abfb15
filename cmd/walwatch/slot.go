package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spf13/cobra"

	"github.com/walwatch/walwatch/replication"
)

func newSlotCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "slot",
		Short: "List, create and drop logical replication slots",
		Long: `A replication slot keeps every WAL segment from its restart position on
until its reader confirms it, so a slot nobody reads fills the disk. list
shows every slot of the cluster and flags the inactive, the large and the
invalidated ones; drop removes one.`,
		// A RunE makes cobra reject an unknown subcommand instead of
		// printing help and exiting 0.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	cmd.AddCommand(
		newSlotListCommand(g),
		newSlotCreateCommand(g),
		newSlotDropCommand(g),
	)
	return cmd
}

func newSlotListCommand(g *globals) *cobra.Command {
	var largeWAL int64
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List every replication slot of the cluster, with warnings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withPool(cmd.Context(), func(pool *pgxpool.Pool) error {
				slots, err := replication.ListSlots(cmd.Context(), pool)
				if err != nil {
					return err
				}
				return g.printSlots(slots, largeWAL)
			})
		},
	}
	cmd.Flags().Int64Var(&largeWAL, "large-wal", replication.LargeWALHeld, "flag slots holding at least this many bytes of WAL (0: never)")
	return cmd
}

// printSlots prints slots as a JSON array or a table, flagging those
// holding at least largeWAL bytes of WAL.
func (g *globals) printSlots(slots []replication.SlotInfo, largeWAL int64) error {
	out := make([]replication.SlotView, len(slots)) // [] in JSON when there are none
	for i, s := range slots {
		out[i] = replication.NewSlotView(s, largeWAL)
	}
	return g.print(out, func(w io.Writer) {
		if len(out) == 0 {
			fmt.Fprintln(w, "no replication slots")
			return
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tPLUGIN\tACTIVE\tCONFIRMED_FLUSH\tRESTART\tWAL_HELD\tWAL_STATUS\tSAFE_WAL_SIZE\tWARNINGS")
		for _, s := range out {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				s.Name, dash(s.Plugin), activeString(s), dash(s.ConfirmedFlushLSN), dash(s.RestartLSN),
				humanBytes(s.WALHeldBytes), dash(s.WALStatus), safeWALString(s.SafeWALSize), dash(strings.Join(s.Warnings, "; ")))
		}
		tw.Flush()
	})
}

func newSlotCreateCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "create NAME",
		Short: "Create a persistent logical slot (pgoutput) in the connected database",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withPool(cmd.Context(), func(pool *pgxpool.Pool) error {
				s, err := replication.CreateSlot(cmd.Context(), pool, args[0])
				if err != nil {
					return err
				}
				return g.print(replication.NewSlotView(s, replication.LargeWALHeld), func(w io.Writer) {
					fmt.Fprintf(w, "slot %s created at LSN %s\n", s.Name, s.ConfirmedFlushLSN)
				})
			})
		},
	}
}

func newSlotDropCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "drop NAME",
		Short: "Drop a replication slot, freeing the WAL it holds",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withPool(cmd.Context(), func(pool *pgxpool.Pool) error {
				name := args[0]
				if err := replication.DropSlot(cmd.Context(), pool, name, force); err != nil {
					if !force && errors.Is(err, replication.ErrSlotActive) {
						return fmt.Errorf("%w: use --force to terminate it", err)
					}
					return err
				}
				return g.print(map[string]string{"dropped": name}, func(w io.Writer) {
					fmt.Fprintf(w, "slot %s dropped\n", name)
				})
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "terminate the process reading the slot, then drop it")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func activeString(s replication.SlotView) string {
	if !s.Active {
		return "no"
	}
	if s.ActivePID == 0 {
		return "yes"
	}
	return strconv.Itoa(int(s.ActivePID))
}

func safeWALString(n *int64) string {
	if n == nil {
		return "unlimited"
	}
	return humanBytes(*n)
}

// humanBytes prints a byte count in binary units, one decimal past bytes.
func humanBytes(n int64) string {
	const units = "KMGT"
	if n > -1024 && n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/1024, 0
	for (v <= -1024 || v >= 1024) && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, units[i])
}
